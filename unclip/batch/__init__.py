"""Batch generation (`unclip batch`): prompt files, stable ids and seeds, resumable runs over many processes."""
