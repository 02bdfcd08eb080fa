"""CLIP reranking: make N candidates per prompt and keep the K that a CLIP model scores highest against the
prompt (DALL·E 1 §2.5 reranked 512 samples with CLIP; DALL·E 2 §7 compares with and without it).

    from unclip.rerank import ClipReranker
    rerank = ClipReranker.from_name("ViT-L-14/openai")      # any open_clip MODEL/PRETRAINED, hf-hub:, local-dir:
    out = pipe("a corgi playing a trumpet", num_images_per_prompt=8, rerank=rerank, keep=2)
    out.metadata[0]["clip_score"], out.metadata[0]["rank"]  # the best first

The score is the cosine similarity of the open_clip image and text embeddings (CLIPScore without its
100 · max(·, 0) rescaling). Use a CLIP other than the cascade's own for an unbiased choice: the prior was
trained to please the cascade's CLIP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unclip.clip_models import OPENAI_MEAN, OPENAI_STD, create_openclip_model, resize_center_crop
from unclip.errors import UnclipError


@dataclass
class ClipReranker:
    """An open_clip model (``encode_image``, ``encode_text``), its tokenizer and image preprocessing."""

    name: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_name(cls, name: str, device: str | torch.device = "cpu") -> ClipReranker:
        """``MODEL/PRETRAINED`` (a tag or a local checkpoint file), ``hf-hub:ORG/REPO`` or ``local-dir:FOLDER``;
        an ``openclip:`` prefix is accepted too."""
        spec = name.removeprefix("openclip:")
        model, model_name = create_openclip_model(spec, f"--rerank {name}")  # refuses a missing open_clip
        import open_clip

        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as err:  # open_clip reports a missing tokenizer as assorted errors
            raise UnclipError(f"--rerank {name}: no tokenizer for it ({str(err).splitlines()[0][:200]})") from None
        return cls.from_model(model.to(device), tokenizer, name)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Callable, name: str = "custom") -> ClipReranker:
        """An open_clip model built in-process (e.g. ``open_clip.create_model`` on a custom config)."""
        model.eval().requires_grad_(False)
        pp = getattr(model.visual, "preprocess_cfg", None) or {}  # open_clip's factory sets it; a bare CLIP lacks it
        size = pp.get("size", model.visual.image_size)
        size = size if isinstance(size, int) else size[0]
        mean, std = pp.get("mean", OPENAI_MEAN), pp.get("std", OPENAI_STD)
        return cls(name, model, tokenizer, int(size), tuple(mean), tuple(std))

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image (B, 3, H, W) in [0, 1] with its text: (B,) float32."""
        if images.shape[0] != len(texts):
            raise UnclipError(f"got {images.shape[0]} images for {len(texts)} texts: give one text per image")
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        x = resize_center_crop(images.to(device, torch.float32), self.image_size).clamp(0, 1)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        image_embeds = self.model.encode_image(((x - mean) / std).to(dtype))
        text_embeds = self.model.encode_text(self.tokenizer(texts).to(device))
        return F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)

    def choose(
        self, x: torch.Tensor, metadata: list[dict[str, Any]], per_prompt: int, keep: int
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Of each prompt's ``per_prompt`` consecutive candidates (images in [-1, 1]), the ``keep`` best, best
        first; each kept image's metadata gains ``clip_score``, ``rank`` (0 = best), ``candidates`` and
        ``rerank`` (this model's name)."""
        scores = self.score((x * 0.5 + 0.5).clamp(0, 1), [meta["prompt"] for meta in metadata]).cpu()
        chosen = []
        for first in range(0, len(metadata), per_prompt):
            order = torch.argsort(scores[first : first + per_prompt], descending=True, stable=True)[:keep]
            chosen += [(first + int(j), rank) for rank, j in enumerate(order)]
        kept = [
            {
                **metadata[k],
                "clip_score": round(float(scores[k]), 4),
                "rank": rank,
                "candidates": per_prompt,
                "rerank": self.name,
            }
            for k, rank in chosen
        ]
        return x[torch.tensor([k for k, _ in chosen], device=x.device)], kept
