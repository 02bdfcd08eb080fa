"""Zero-shot accuracy of the demo CLIP on the shapes: each image's attributes read off text embeddings alone.

    from unclip.demo.clip_zero_shot import eval_images, zero_shot

    images, attributes = eval_images(n=960)     # uint8 (N, 3, 64, 64), rendered from shapes.eval_prompts
    report = zero_shot(model, images, attributes)
    report.accuracy["colour"], report.held_out["shape"]

Classes: every caption of the shapes grammar with every part said (``all_attributes``: 1,680 of them) is one. A
caption without "in the <position>" is true of an image anywhere (unclip data shapes trains on it so), so it is
no class of its own, and position is scored on the images placed at a named position only. An image's score
for an attribute value is the log-sum-exp of its logits (logit scale × cosine) over the captions with that
value, i.e. the posterior over captions marginalised onto the attribute; the prediction is the best value.
The model never sees a caption of the held-out colour-and-shape pairs in training (``shapes.HELD_OUT``), yet
they are classes here and an eighth of the evaluation images: ``held_out`` is the accuracy on those images.
``sizeless`` scores the same images against the captions that leave the size word out (840 classes; size not
scored): the form whose text a tower trained on full captions alone read with every later token shifted.

Short prompts score far worse on this model, which only ever read the full grammar: on one whose marginalised
colour accuracy was 100 %, "a <colour> shape" against the 8 colours gave 56 %.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from unclip.demo import shapes
from unclip.demo.clip import IMAGE_SIZE, encode_images, encode_texts


@dataclass
class ZeroShotReport:
    accuracy: dict[str, float]  # attribute → fraction right, over all images
    held_out: dict[str, float]  # the same over the images of held-out colour-and-shape pairs (empty: none)
    sizeless: dict[str, float]  # ``accuracy`` against the captions without the size word (size not scored)
    n: int
    n_held_out: int


def all_attributes(size: bool = True) -> list[shapes.Attributes]:
    """Every attribute combination the grammar can caption with every part said (the shape's colour is never the
    background's; a named position); ``size=False``: the same without the size word (fewer: sizes merge)."""
    positions = [p for p in shapes.POSITIONS if p != "anywhere"]
    sizes = shapes.AREAS if size else (None,)
    grid = itertools.product(shapes.COLOURS, shapes.SHAPES, shapes.COLOURS, sizes, positions)
    return [shapes.Attributes(shape=s, colour=c, background=b, size=z, position=p) for c, s, b, z, p in grid if b != c]


def eval_images(
    n: int, render_size: int = IMAGE_SIZE, resolution: int = IMAGE_SIZE, seed: int = shapes.EVAL_SEED
) -> tuple[torch.Tensor, list[shapes.Attributes]]:
    """The first ``n`` of ``shapes.eval_prompts``, each placed from (seed, index), drawn at ``render_size`` and
    resized to ``resolution`` as the training data is read (bicubic): uint8 (n, 3, R, R) and the attributes."""
    attributes = shapes.eval_prompts(n, seed, forms=False)  # every attribute said: each one is a class
    images = []
    for i, a in enumerate(attributes):
        pixels = shapes.render(shapes.place(a, np.random.default_rng([seed, 1, i])), render_size)
        image = Image.fromarray(pixels)
        if render_size != resolution:
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    return torch.stack(images), attributes


@torch.no_grad()
def zero_shot(model, images: torch.Tensor, attributes: list[shapes.Attributes]) -> ZeroShotReport:
    """Per-attribute zero-shot accuracy of ``model`` (open_clip) on uint8 ``images`` with true ``attributes``."""
    features = encode_images(model, images)
    right = _right(model, features, attributes, all_attributes())
    sizeless = _right(model, features, attributes, all_attributes(size=False))
    held = torch.tensor([a.held_out for a in attributes])
    placed = torch.tensor([a.position != "anywhere" for a in attributes])  # position asked of these only
    asked = {name: placed if name == "position" else torch.ones_like(placed) for name in right}
    return ZeroShotReport(
        accuracy={k: v[asked[k]].float().mean().item() for k, v in right.items()},
        held_out={k: v[held & asked[k]].float().mean().item() for k, v in right.items()} if held.any() else {},
        sizeless={k: v[asked[k]].float().mean().item() for k, v in sizeless.items()},
        n=len(attributes),
        n_held_out=int(held.sum()),
    )


def _right(model, features, attributes, classes) -> dict[str, torch.Tensor]:
    """Per attribute, whether each image's best value (its logits marginalised over ``classes``) is its own."""
    texts = encode_texts(model, [c.caption for c in classes])
    logits = model.logit_scale.exp() * features @ texts.T  # (N, C)
    return {
        name: torch.tensor([v == getattr(a, name) for v, a in zip(best, attributes, strict=True)])
        for name, best in best_values(logits, classes).items()
    }


def best_values(logits: torch.Tensor, classes: list[shapes.Attributes]) -> dict[str, list]:
    """Per attribute the ``classes`` say, each row's best value: the log-sum-exp of its ``logits`` (N, C) over the
    classes with that value (the posterior over captions marginalised onto the attribute), then the argmax."""
    best: dict[str, list] = {}
    for name in shapes.ATTRIBUTES:
        values = sorted({getattr(c, name) for c in classes})
        if values == [None]:  # not said in these classes
            continue
        member = torch.tensor([[getattr(c, name) == v for c in classes] for v in values])  # (V, C)
        scores = torch.stack([logits[:, m].logsumexp(dim=-1) for m in member], dim=-1)  # (N, V)
        best[name] = [values[i] for i in scores.argmax(dim=-1).tolist()]
    return best
