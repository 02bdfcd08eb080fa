"""Ship a trained cascade as the offline demo: fp16 safetensors in the hub layouts, loaded by `--model demo`.

    python scripts/export_demo.py runs/demo/decoder3/model.yaml --upsamplers runs/demo/sr256/model.yaml \
        --upscaler runs/demo/sr1024/model.yaml --clip runs/demo/clip --out models/demo --force

MODEL gives the text encoder, prior, text projection and decoder; --upsamplers (optional) the 64→256
upsamplers and the 256→1024 upscaler, from a cascade whose upsampler stages were trained apart (they see no
text, so scripts/train_demo.sh trains them beside the prior and decoder; DALL·E 2 trains its stages apart too);
--upscaler (optional) then the 256→1024 upscaler alone (its UNet and scheduler), from another run. Either may be
OUT's own model.yaml (`--upsamplers models/demo/model.yaml`: keep the shipped upsamplers): everything is read first,
written into OUT.partial, and OUT replaced only by a whole export.
Writes OUT/unclip (Karlo layout), OUT/upscaler (pixel layout), OUT/model.yaml, and OUT/clip (the demo CLIP's
image tower, image_encoder/ and feature_extractor/, in fp32, for image variations and
`data.clip=hf:OUT/clip/image_encoder`), the rest in fp16; prints the size. configs/demo.yaml points at
OUT; pyproject.toml packs it into the wheel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from unclip.errors import UnclipError, run_entry_point


def join_upsamplers(cascade, other) -> None:
    """Put ``other``'s 64→256 upsamplers and 256→1024 upscaler (all its upscaler components) into ``cascade``."""
    if other.upscaler_layout is None:
        raise UnclipError("--upsamplers: that cascade has no 256→1024 upscaler; give the sr256 run's model.yaml")
    sr256 = other.stages["sr256"]
    cascade.register_modules(**{name: getattr(other, name) for name in [*sr256.components, sr256.scheduler]})
    join_upscaler(cascade, other)
    cascade.max_noise_level = other.max_noise_level


def join_upscaler(cascade, other) -> None:
    """Put ``other``'s 256→1024 upscaler (its upscaler components: the UNet and its scheduler) into ``cascade``."""
    from unclip.loading import UPSCALER_PREFIX

    if other.upscaler_layout is None:
        raise UnclipError("--upscaler: that cascade has no 256→1024 upscaler; give the sr1024 run's model.yaml")
    cascade.register_modules(**{n: getattr(other, n) for n in cascade.components if n.startswith(UPSCALER_PREFIX)})


def drop_machine_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` (where each part was read from: a path on the machine that exported it, which diffusers
    writes on save) from every config.json under ``folder``; nothing loads it back."""
    for path in folder.rglob("config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export(
    model: str, clip: Path | None, out: Path, force: bool, upsamplers: str | None = None, upscaler: str | None = None
) -> int:
    from unclip.pipeline import UnCLIPCascade

    if out.exists() and any(out.iterdir()) and not force:
        raise UnclipError(f"{out} is not empty: give another --out, or --force to replace it")
    # every part is read before anything is written, so --upsamplers may be OUT's own model.yaml (a retrained text
    # side keeps the shipped upsamplers), and OUT is replaced only by a whole export
    cascade = UnCLIPCascade.from_pretrained(model)
    if upsamplers is not None:
        join_upsamplers(cascade, UnCLIPCascade.from_pretrained(upsamplers))
    if upscaler is not None:
        join_upscaler(cascade, UnCLIPCascade.from_pretrained(upscaler))
    for component in cascade.components.values():
        if isinstance(component, torch.nn.Module):
            component.to(torch.float16)
    # the image tower travels with the export (below): model.yaml names it relative to itself
    cascade.model_config = dataclasses.replace(
        cascade.model_config, image_encoder="hf:clip/image_encoder" if clip is not None else None
    )
    if clip is not None:
        for part in ("image_encoder", "feature_extractor"):
            if not (clip / part).is_dir():
                raise UnclipError(f"--clip {clip} has no {part}/: give the folder scripts/train_demo_clip.py wrote")
    partial, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    cascade.save_pretrained(partial)
    drop_machine_paths(partial)
    if clip is not None:  # kept in fp32: small, and read as is by `hf:` encoders on a CPU
        for part in ("image_encoder", "feature_extractor"):
            shutil.copytree(clip / part, partial / "clip" / part)
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained cascade's model.yaml (the decoder run's output_dir)")
    parser.add_argument("--upsamplers", help="model.yaml of a cascade whose upsamplers to use (the sr256 run's)")
    parser.add_argument("--upscaler", help="model.yaml of a cascade whose 256→1024 upscaler to use (the sr1024 run's)")
    parser.add_argument("--clip", type=Path, help="the demo CLIP folder (scripts/train_demo_clip.py --out)")
    parser.add_argument("--out", type=Path, default=Path("models/demo"))
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)

    def run() -> int:
        size = export(args.model, args.clip, args.out, args.force, args.upsamplers, args.upscaler)
        print(f"{args.out}: {size / 2**20:.1f} MiB")
        return 0

    return run_entry_point(run)


if __name__ == "__main__":
    sys.exit(main())
