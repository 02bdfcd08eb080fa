"""Which images make up each contrastive batch: distinct captions, and minimal pairs where attributes are known.

    from unclip.demo.clip_batches import BatchSampler

    sampler = BatchSampler(texts, batch_size=64, seed=0, attributes=rows, hard_fraction=0.5, group_size=8)
    index = sampler.next()   # (64,) int64 image indices

In a batch of random shapes captions two images rarely differ in the shape or the position alone, so the loss
is nearly minimal without either (measured: both at chance after 400 steps of random batches of 64, colour
and background near 100 %). With ``attributes`` (one dict per image, e.g. the shapes metadata),
``hard_fraction`` of each batch is made of minimal-pair groups: a random anchor image and up to
``group_size - 1`` images that match it on every attribute but one, which only that attribute tells apart.
The attribute of a group is drawn with a weight of 1 / (the pairs in a full group of it), so that each
attribute gets about as many pairs per batch: a shape group holds at most 3 captions (3 pairs), a colour
group 7 (21 pairs), and shape is also the attribute a small ViT learns last. The rest of the batch is random.
No caption appears twice in a batch (its images would be each other's false negatives), so a batch is
smaller when the data has fewer captions.
"""

from __future__ import annotations

from collections import defaultdict

import torch


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
        sizes = [min(len({row[k] for row in attributes}), group_size) for k in self.names]
        self.weights = torch.tensor([2 / max(1, m * (m - 1)) for m in sizes], dtype=torch.float64)
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
            attribute = int(torch.multinomial(self.weights, 1, generator=self.generator))
            group = self.pairs[attribute][anchor]
            room = min(self.group_size, self.hard - len(chosen))
            if not take(anchor):
                continue
            taken = 1
            for k in torch.randperm(len(group), generator=self.generator).tolist():
                if taken == room:
                    break
                taken += take(group[k])
        for i in torch.randperm(len(self.texts), generator=self.generator).tolist():
            if len(chosen) == self.batch_size:
                break
            take(i)
        return torch.tensor(chosen, dtype=torch.long)
