"""Which images make up each contrastive batch: distinct captions, and minimal pairs where attributes are known.

    from unclip.demo.clip_batches import BatchSampler

    sampler = BatchSampler(texts, batch_size=64, seed=0, attributes=rows, hard_fraction=0.75, group_size=8)
    index = sampler.next()   # (64,) int64 image indices
    sampler.update(logits)   # that batch's (64, 64) image-to-text logits: steers the next groups

In a batch of random shapes captions two images rarely differ in the shape or the position alone, so the loss
is nearly minimal without either (measured: both at chance after 400 steps of random batches of 64, colour
and background near 100 %). With ``attributes`` (one dict per image, e.g. the shapes metadata),
``hard_fraction`` of each batch is made of minimal-pair groups: a random anchor image and up to
``group_size - 1`` images that match it on every attribute but one, which only that attribute tells apart.

Which attribute a group varies is drawn in proportion to how often the model still confuses the groups of
each (``update``: a running mean of the within-group image-to-caption errors, all 1 at the start, plus a
floor), so the batches follow what is not learned yet: background, colour and size within a few hundred
steps, then shape and position. The rest of the batch is random. No caption appears twice in a batch (its
images would be each other's false negatives), so a batch is smaller when the data has fewer captions.
"""

from __future__ import annotations

from collections import defaultdict

import torch

ERROR_DECAY = 0.95  # of the running within-group error per attribute
ERROR_FLOOR = 0.02  # an attribute the model has learned is still drawn now and then


class BatchSampler:
    def __init__(
        self,
        texts: list[str],
        batch_size: int,
        seed: int,
        attributes: list[dict[str, str]] | None = None,
        hard_fraction: float = 0.0,
        group_size: int = 8,
    ):
        self.texts = texts
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.hard = int(batch_size * hard_fraction) if attributes else 0
        self.group_size = group_size
        self.names = sorted(attributes[0]) if attributes else []
        self.errors = torch.ones(len(self.names), dtype=torch.float64)  # running within-group error rates
        self._groups: list[tuple[int, int, int]] = []  # of the last batch: attribute, start, end
        # per attribute: image → the images that share all the other attributes with it (itself included)
        self.pairs: list[list[list[int]]] = []
        for name in self.names:
            others = [tuple(row[k] for k in self.names if k != name) for row in attributes]
            members: dict[tuple, list[int]] = defaultdict(list)
            for i, key in enumerate(others):
                members[key].append(i)
            self.pairs.append([members[key] for key in others])

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def next(self) -> torch.Tensor:
        chosen: list[int] = []
        captions: set[str] = set()
        self._groups = []

        def take(i: int) -> bool:
            if self.texts[i] in captions:  # also: i itself is already in
                return False
            chosen.append(i)
            captions.add(self.texts[i])
            return True

        tries = 0
        while len(chosen) < self.hard and tries < 4 * self.hard:  # tries: the data may hold too few captions
            tries += 1
            anchor = self._randint(len(self.texts))
            attribute = int(torch.multinomial(self.errors + ERROR_FLOOR, 1, generator=self.generator))
            group = self.pairs[attribute][anchor]
            room = min(self.group_size, self.hard - len(chosen))
            if not take(anchor):
                continue
            taken = 1
            for k in torch.randperm(len(group), generator=self.generator).tolist():
                if taken == room:
                    break
                taken += take(group[k])
            if taken > 1:
                self._groups.append((attribute, len(chosen) - taken, len(chosen)))
        for i in torch.randperm(len(self.texts), generator=self.generator).tolist():
            if len(chosen) == self.batch_size:
                break
            take(i)
        return torch.tensor(chosen, dtype=torch.long)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """Feed back the last batch's image-to-text logits (B, B): how often each group's images pick another
        caption of their group moves that attribute's running error."""
        errors: dict[int, list[float]] = defaultdict(list)
        for attribute, start, end in self._groups:
            block = logits[start:end, start:end]
            right = block.argmax(dim=-1) == torch.arange(end - start, device=block.device)
            errors[attribute].append(1 - right.float().mean().item())
        for attribute, values in errors.items():
            mean = sum(values) / len(values)
            self.errors[attribute] = ERROR_DECAY * self.errors[attribute] + (1 - ERROR_DECAY) * mean

    def describe(self) -> str:
        """``"; confused: colour 0.01, shape 0.40, ..."``: the running errors, for the log ("" without groups)."""
        if not self.hard:
            return ""
        return "; confused: " + ", ".join(f"{n} {e:.2f}" for n, e in zip(self.names, self.errors.tolist(), strict=True))
