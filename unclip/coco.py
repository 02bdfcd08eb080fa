"""`unclip eval coco`: the DALL·E 2 paper's zero-shot MS-COCO protocol (its Table 2, FID 10.39), for users who
have MS-COCO on disk.

    from unclip.coco import Protocol, evaluate
    result = evaluate(Protocol(captions="annotations/captions_val2014.json", images="val2014/", model="demo",
                               n=30000, out="coco/", size=256))
    # {"fd": .., "features": .., "clip_score": .., "n": 30000, "n_real": .., ...}

1. ``draw``: ``n`` images of the captions file chosen at random with ``seed``, one of each image's captions chosen
   with the same generator (the paper's "captions drawn at random from the validation set"); written to
   ``OUT/sample.jsonl`` (image id, file, caption) and ``OUT/prompts.jsonl``. A rerun draws the same sample and checks
   it against the file, so a folder never mixes two samples.
2. One image per caption through the batch machinery (``unclip.batch.command``) into ``OUT/images/``: resumable
   (rerun the same command), and under ``accelerate launch`` spread over many processes.
3. The Fréchet distance of the generated images from the drawn captions' real images (center-cropped and resized to
   the generated size) — FID with ``features="inception:PATH"``, else on CLIP image features — and the CLIP score of
   each generated image with its caption (``unclip.metrics``). Written to ``OUT/coco.json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unclip.errors import UnclipError

SAMPLE, PROMPTS, IMAGES, RESULT = "sample.jsonl", "prompts.jsonl", "images", "coco.json"


@dataclass(frozen=True)
class Drawn:
    """One caption of the sample: its image's COCO id and file, and the caption (whitespace tidied)."""

    image_id: int
    file_name: str
    caption: str


@dataclass
class Protocol:
    captions: Path  # captions_val2014.json (COCO's annotation format)
    images: Path  # the folder of its images (val2014/)
    model: str
    out: Path
    n: int = 30000
    seed: int = 0
    size: int | None = None  # the generated (and compared) size; None: 256, or the model's largest if smaller
    features: str | None = None  # FD features (a model, openclip:.., hf:.., inception:PATH); None: the model's CLIP
    clip: str | None = None  # the CLIP of the CLIP score; None: the model's own
    sampling: dict[str, Any] = field(default_factory=dict)  # UnCLIPCascade.__call__ keywords, as `unclip batch`
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


def read_captions(path: Path) -> dict[int, tuple[str, list[str]]]:
    """image id → (its file name, its captions in annotation-id order), from a COCO captions file."""
    path = Path(path)
    if not path.is_file():
        raise UnclipError(f"--captions {path}: no such file: give MS-COCO's annotations/captions_val2014.json")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        files = {int(image["id"]): str(image["file_name"]) for image in content["images"]}
        notes = sorted(content["annotations"], key=lambda note: int(note["id"]))
        captions: dict[int, list[str]] = {}
        for note in notes:
            captions.setdefault(int(note["image_id"]), []).append(" ".join(str(note["caption"]).split()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UnclipError(f"--captions {path} is not a COCO captions file ({type(err).__name__}: {err}): give "
                          "annotations/captions_val2014.json") from None  # fmt: skip
    return {i: (files[i], texts) for i, texts in captions.items() if i in files and any(texts)}


def draw(captions: dict[int, tuple[str, list[str]]], n: int, seed: int) -> list[Drawn]:
    """``n`` images at random (``random.Random(seed)``), one caption of each, in the order drawn."""
    if not 1 <= n <= len(captions):
        raise UnclipError(f"--n {n}: the captions file has {len(captions)} captioned images: give --n between 1 and "
                          f"{len(captions)}")  # fmt: skip
    rng = random.Random(seed)
    chosen = rng.sample(sorted(captions), n)
    return [Drawn(i, captions[i][0], rng.choice([t for t in captions[i][1] if t])) for i in chosen]


def write_sample(out: Path, drawn: list[Drawn]) -> None:
    """``OUT/sample.jsonl`` and ``OUT/prompts.jsonl``; a folder holding another sample is refused."""
    from unclip.batch.store import write_atomically
    from unclip.outputs import ensure_writable

    ensure_writable(out)
    lines = "".join(json.dumps(asdict(d)) + "\n" for d in drawn)
    sample = out / SAMPLE
    if sample.is_file() and sample.read_text(encoding="utf-8") != lines:
        raise UnclipError(f"{out} holds a sample of other captions, --n or --seed: rerun that command to resume it, "
                          "or choose another --out")  # fmt: skip
    prompts = "".join(json.dumps({"prompt": d.caption}) + "\n" for d in drawn)
    for name, text in ((SAMPLE, lines), (PROMPTS, prompts)):
        write_atomically(out / name, lambda f, text=text: f.write(text.encode("utf-8")))


def _size(protocol: Protocol) -> int:
    from unclip.config import load_model_config

    if protocol.size is not None:
        return protocol.size
    return min(256, load_model_config(protocol.model).max_size)


def generate(protocol: Protocol, size: int):
    """One image per drawn caption into ``OUT/images/`` (``unclip batch``'s run: resumable); its summary in the
    main process, else None."""
    from unclip.batch.command import Request, run

    request = Request(
        prompts=protocol.out / PROMPTS,
        model=protocol.model,
        out=protocol.out / IMAGES,
        num_images=1,
        seed=protocol.seed,
        size=size,
        sampling=protocol.sampling,
        dtype=protocol.dtype,
        batch_size=protocol.batch_size,
        device=protocol.device,
        progress=protocol.progress,
    )
    return run(request)


def score(protocol: Protocol, drawn: list[Drawn], size: int, device: str = "cpu") -> dict[str, Any]:
    """The Fréchet distance of the generated images from the drawn real ones, and their CLIP score."""
    from unclip.batch.plan import plan
    from unclip.batch.prompts import read_prompts
    from unclip.metrics import Folder, clip_score, clip_towers, frechet_distance

    jobs = plan(read_prompts(protocol.out / PROMPTS), 1, protocol.seed)
    fake = Folder([protocol.out / IMAGES / job.file_name for job in jobs], [d.caption for d in drawn])
    real = Folder([Path(protocol.images) / d.file_name for d in drawn], size=size)
    clip = protocol.clip or protocol.model
    towers = clip_towers(clip, device)  # loaded once when it also gives the features
    features = towers if protocol.features in (None, clip) else protocol.features
    fd = frechet_distance(features, real.pictures(), fake.pictures(), device)
    scored = clip_score(towers, fake.pairs())
    return {
        "fd": fd["fd"],
        "features": fd["features"],
        "clip_score": scored["clip_score"],
        "clip_score_x100": scored["clip_score_x100"],
        "clip": scored["clip"],
        "n": len(drawn),
        "n_real": fd["n_real"],
        "n_fake": fd["n_fake"],
        "real_missing": len(real.skipped),
        "fake_unreadable": len(fake.skipped),
        "size": size,
        "seed": protocol.seed,
        "model": protocol.model,
    }


def evaluate(protocol: Protocol) -> dict[str, Any] | None:
    """Draw, generate (what ``OUT/images`` lacks) and score; the result (also in ``OUT/coco.json``) in the main
    process, else None."""
    images = Path(protocol.images)
    if not images.is_dir():
        raise UnclipError(f"--images {images}: no such folder: give MS-COCO's val2014/ (the captions' images)")
    drawn = draw(read_captions(protocol.captions), protocol.n, protocol.seed)
    size = _size(protocol)
    out = Path(protocol.out)
    write_sample(out, drawn)
    summary = generate(protocol, size)
    if summary is None:  # another process of accelerate launch: the main one scores
        return None
    from unclip.runtime import resolve_device_and_dtype

    device = str(resolve_device_and_dtype(protocol.device, protocol.dtype)[0])  # what the batch run resolved
    result = {**score(protocol, drawn, size, device), "generation": str(summary)}
    (out / RESULT).write_text(json.dumps(result, indent=1) + "\n")
    return result
