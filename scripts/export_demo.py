"""Ship a trained cascade as the offline demo: fp16 safetensors in the hub layouts, loaded by `--model demo`.

    python scripts/export_demo.py runs/demo/sr1024/model.yaml --clip runs/demo/clip --out models/demo --force

Writes OUT/unclip (Karlo layout), OUT/upscaler (pixel layout), OUT/model.yaml, and OUT/clip (the demo CLIP's
image tower, image_encoder/ and feature_extractor/, in fp32, for image variations and
`data.clip=hf:OUT/clip/image_encoder`), the rest in fp16; prints the size. configs/demo.yaml points at
OUT; pyproject.toml packs it into the wheel.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from unclip.errors import UnclipError


def export(model: str, clip: Path | None, out: Path, force: bool) -> int:
    from unclip.pipeline import UnCLIPCascade

    if out.exists() and any(out.iterdir()):
        if not force:
            raise UnclipError(f"{out} is not empty: give another --out, or --force to replace it")
        shutil.rmtree(out)
    cascade = UnCLIPCascade.from_config(model)
    for component in cascade.components.values():
        if isinstance(component, torch.nn.Module):
            component.to(torch.float16)
    cascade.save_pretrained(out)
    if clip is not None:  # kept in fp32: small, and read as is by `hf:` encoders on a CPU
        for part in ("image_encoder", "feature_extractor"):
            if not (clip / part).is_dir():
                raise UnclipError(f"--clip {clip} has no {part}/: give the folder scripts/train_demo_clip.py wrote")
            shutil.copytree(clip / part, out / "clip" / part)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained cascade's model.yaml (the last demo stage's output_dir)")
    parser.add_argument("--clip", type=Path, help="the demo CLIP folder (scripts/train_demo_clip.py --out)")
    parser.add_argument("--out", type=Path, default=Path("models/demo"))
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        size = export(args.model, args.clip, args.out, args.force)
    except UnclipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
