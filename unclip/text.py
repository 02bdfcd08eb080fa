"""CLIP text conditioning: tokens, the text encoder's outputs as the stages take them, and CLIP similarity.

text = encode_text(tokenizer, text_encoder, ["a cat"], negatives=[""], device=device)
text.rows(guided_stage=False).embeds      # z_t of the prompts only
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger("unclip")


@dataclass
class TextConditioning:
    """CLIP text encoder outputs; ``[negative; prompt]`` rows when ``doubled``."""

    embeds: torch.Tensor
    hidden_states: torch.Tensor
    mask: torch.Tensor
    doubled: bool

    def rows(self, guided_stage: bool) -> TextConditioning:
        """The rows a stage takes: all of them when it is guided, else the prompts' only."""
        if guided_stage or not self.doubled:
            return self
        half = self.embeds.shape[0] // 2
        return TextConditioning(self.embeds[half:], self.hidden_states[half:], self.mask[half:], False)

    def prompt_embeds(self) -> torch.Tensor:
        """z_t of the prompts (not the negatives)."""
        return self.rows(False).embeds

    def repeat(self, n: int) -> TextConditioning:
        """Each row ``n`` times in a row (``[negative; prompt]`` halves kept)."""
        return TextConditioning(
            *(x.repeat_interleave(n, dim=0) for x in (self.embeds, self.hidden_states, self.mask)), self.doubled
        )


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP tokens padded to the tokenizer's 77; warns once per text that is truncated."""
    limit = tokenizer.model_max_length
    for text in dict.fromkeys(texts):
        ids = tokenizer(text, truncation=False)["input_ids"]
        if len(ids) > limit:
            removed = tokenizer.decode(ids[limit - 1 : -1])
            logger.warning("prompt truncated to CLIP's %d tokens; dropped: %r", limit, removed)
    out = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask.bool()


def encode_text(
    tokenizer, text_encoder, prompts: list[str], negatives: list[str] | None, device: torch.device
) -> TextConditioning:
    """CLIP text embeddings z_t, hidden states and masks; ``[negatives; prompts]`` when negatives are given.

    Each distinct text goes through the encoder alone, as UnCLIPPipeline does it, so a row does not depend
    on what else is in the batch (same seed, same picture, alone or batched)."""
    texts = (negatives or []) + prompts
    ids, mask = tokenize(tokenizer, texts)
    first = {text: row for row, text in reversed(list(enumerate(texts)))}
    encoded = {text: text_encoder(ids[row : row + 1].to(device)) for text, row in first.items()}
    embeds = torch.cat([encoded[text].text_embeds for text in texts])
    hidden = torch.cat([encoded[text].last_hidden_state for text in texts])
    return TextConditioning(embeds, hidden, mask.to(device), negatives is not None)


def clip_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dot product of CLIP embeddings as CLIP scores them: of their unit vectors (cosine similarity)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)
