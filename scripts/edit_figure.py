"""The README's inpainting and outpainting figure, made by the demo offline: before | mask | after, then an
outpainted picture beside its source.

    python scripts/edit_figure.py --out docs/edit.png            # 256 px, seed 0 (about a minute on 2 cores)
    python scripts/edit_figure.py --size 64 --seed 3 --out /tmp/edit.png

The inpainting is issue 18's case: a red square at the top left on blue, the bottom-right quadrant masked,
"a large yellow circle in the bottom right on a blue background". Each edited half is read back by the shapes
checker (the other half painted over with the background) and printed; the script exits 1 when either is wrong.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPT = "a large yellow circle in the bottom right on a blue background"
OUTPAINT_PROMPT = "a large red square on a blue background"


def scene(size: int) -> np.ndarray:
    from unclip.demo.shapes import ANCHORS, Attributes, Scene, render

    return render(Scene(Attributes("square", "red", "blue", "large", "top left"), *ANCHORS["top left"], 0.08), size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/edit.png"))
    parser.add_argument("--size", type=int, default=256, choices=(64, 256, 1024))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from unclip import UnCLIPCascade
    from unclip.demo.checker import detect
    from unclip.demo.shapes import PALETTE

    pipe = UnCLIPCascade.from_pretrained("demo")
    size, half = args.size, args.size // 2
    source = scene(size)
    mask = np.zeros((size, size), np.uint8)
    mask[half:, half:] = 255
    after = np.asarray(pipe.edit(source, mask / 255, PROMPT, seed=args.seed, size=size).images[0])
    blue = np.asarray(PALETTE["blue"], np.uint8)
    old, new = after.copy(), after.copy()
    old[half:, half:], new[:half, :half] = blue, blue
    found = [(d.colour, d.shape, d.position) for d in (detect(old), detect(new))]
    print(f"kept: {found[0]}; painted: {found[1]}")
    # outpainting: the picture at 3/4 of the side, a border of 1/8 on each side repainted
    small = scene(size * 3 // 4)
    wider = np.asarray(pipe.edit(small, prompt=OUTPAINT_PROMPT, pad=size // 8, seed=args.seed, size=size).images[0])
    framed = np.zeros((size, size, 3), np.uint8) + 255
    framed[size // 8 : size // 8 + small.shape[0], size // 8 : size // 8 + small.shape[1]] = small
    panels = [source, np.repeat(mask[..., None], 3, 2), after, framed, wider]
    gap = 8
    figure = Image.new("RGB", (len(panels) * (size + gap) - gap, size + 18), "white")
    draw = ImageDraw.Draw(figure)
    for k, (panel, label) in enumerate(
        zip(panels, ("before", "mask", "after", "outpaint: before", "after"), strict=True)
    ):
        figure.paste(Image.fromarray(panel), (k * (size + gap), 18))
        draw.text((k * (size + gap) + 2, 2), label, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(args.out)
    return 0 if found == [("red", "square", "top left"), ("yellow", "circle", "bottom right")] else 1


if __name__ == "__main__":
    raise SystemExit(main())
