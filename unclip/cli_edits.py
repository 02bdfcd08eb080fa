"""The ``unclip`` commands of DALL·E 2's image manipulations (§3), on ``UnCLIPCascade``'s edit methods:

    unclip vary photo.png --num-images 4                                   # variations
    unclip vary photo.png --invert --eta 0.3 --num-images 4                # faithful: DDIM inversion, then η
    unclip interpolate photo.png "a blue square on a red background" --frames 8 --gif
    unclip diff photo.png --from "a red circle" --to "a red square" --frames 5 --gif
    unclip edit photo.png --mask mask.png "a large yellow circle in the bottom right on a blue background"
    unclip edit photo.png --expand 32 "a red square on a blue background"   # outpainting

An end of ``interpolate`` that is an existing file is an image; anything else is a prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli_args import (
    add_pipeline_args,
    flag_type,
    load_pipeline,
    non_negative,
    positive_int,
    sampling_kwargs,
    save_result,
)
from unclip.errors import UnclipError
from unclip.plan import KEYWORDS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _image_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise UnclipError(f"image {text} does not exist: give a PNG or JPEG file")
    return path


def _image_or_prompt(text: str) -> Path | str:
    """An existing file is an image; a missing file name (it ends in .png, ...) is refused; else a prompt."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.lower().endswith(IMAGE_SUFFIXES):
        raise UnclipError(f"image {text} does not exist (a prompt does not end in {path.suffix}): check the path")
    if not text.strip():
        raise UnclipError('an interpolation end is empty: give an image file or a prompt such as "a red circle"')
    return text


def _frames(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=positive_int, default=5, help="images from the first end to the last")
    p.add_argument("--gif", action="store_true", help="also write the frames as a looping GIF beside them")
    p.add_argument("--gif-ms", type=positive_int, default=250, help="milliseconds per GIF frame")


def _save_frames(out: Path, result, args) -> None:
    paths = save_result(out, result)
    if args.gif:
        from unclip.outputs import save_gif

        print(save_gif(paths, args.gif_ms))


def add_vary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="+", help="one or more PNG/JPEG files")
    p.add_argument("--num-images", type=positive_int, default=1, help="variations per image")
    p.add_argument("--prompt", help='the decoder\'s caption (default: ""): steers the variations through text too')
    p.add_argument(
        "--invert",
        action="store_true",
        help="faithful variations: DDIM-invert the image to the decoder's noise, then sample with DDIM at --eta",
    )
    p.add_argument(
        "--eta",
        type=flag_type(KEYWORDS["decoder_eta"]),
        help="the decoder's DDIM η (--decoder-eta); with --invert: 0 gives the image back, 1 varies the most "
        "(default with --invert: 0.5)",
    )
    add_pipeline_args(p, "variation k of the run uses seed SEED + k", inversion=True)


def run_vary(args) -> int:
    images = [_image_file(text) for text in args.image]
    pipe, out = load_pipeline(args, "decoder", args.invert)
    result = pipe.vary(
        images,
        prompt=args.prompt,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        size=args.size,
        invert=args.invert,
        eta=args.eta,
        **sampling_kwargs(args),
    )
    save_result(out, result)
    return 0


def add_interpolate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("start", help="an image file, or a prompt (its embedding drawn by the prior with --seed)")
    p.add_argument("end", help="an image file, or a prompt")
    _frames(p)
    p.add_argument("--prompt", help='the decoder\'s caption for every frame (default: "")')
    add_pipeline_args(p, "one seed for every frame: the noise is held fixed")


def run_interpolate(args) -> int:
    start, end = _image_or_prompt(args.start), _image_or_prompt(args.end)
    pipe, out = load_pipeline(args, "prior" if isinstance(start, str) or isinstance(end, str) else "decoder")
    result = pipe.interpolate(
        start, end, frames=args.frames, seed=args.seed, size=args.size, prompt=args.prompt, **sampling_kwargs(args)
    )
    _save_frames(out, result, args)
    return 0


def add_diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a PNG/JPEG file")
    p.add_argument("--from", dest="from_prompt", required=True, help='a caption of the image: "a photo of a cat"')
    p.add_argument("--to", dest="to_prompt", required=True, help='the caption to move to: "an anime drawing of a cat"')
    _frames(p)
    p.add_argument(
        "--max-theta", type=float, default=0.5, help="how far the last frame turns (0-1; the paper uses 0.25-0.5)"
    )
    p.add_argument(
        "--no-invert",
        dest="invert",
        action="store_false",
        help="fixed noise from --seed instead of the image's DDIM inversion (frame 0 is then not the image)",
    )
    add_pipeline_args(
        p, "the noise of the stages after the decoder (and of the decoder with --no-invert)", inversion=True
    )


def run_diff(args) -> int:
    image = _image_file(args.image)
    if not 0 < args.max_theta <= 1:
        raise UnclipError(f"--max-theta must be in (0, 1], got {args.max_theta}")
    pipe, out = load_pipeline(args, "decoder", args.invert)
    result = pipe.text_diff(
        image,
        args.from_prompt,
        args.to_prompt,
        frames=args.frames,
        max_theta=args.max_theta,
        invert=args.invert,
        seed=args.seed,
        size=args.size,
        **sampling_kwargs(args),
    )
    _save_frames(out, result, args)
    return 0


def add_edit_args(p: argparse.ArgumentParser) -> None:
    from unclip.masks import MASK_HELP

    p.add_argument(
        "image", help="a square PNG/JPEG (an RGBA PNG's transparent pixels are its mask if --mask is not given)"
    )
    p.add_argument("prompt", help="what the repainted region, and the picture as a whole, should show")
    p.add_argument("--mask", help=f"a PNG of the image's size: {MASK_HELP}")
    border = p.add_mutually_exclusive_group()
    border.add_argument("--expand", type=non_negative, metavar="PIXELS",
                        help="outpainting: add PIXELS of new canvas on every side and paint it")  # fmt: skip
    border.add_argument("--pad", metavar="LEFT,TOP,RIGHT,BOTTOM", help="outpainting: the border to add, per side")
    p.add_argument("--num-images", type=positive_int, default=1, help="edits of the picture, each its own seed")
    p.add_argument("--negative-prompt", default=None, help='used in place of "" in the unguided branch')
    p.add_argument("--image-weight", type=float, default=0.0,
                   help="turn the prompt's image embedding towards the picture's own CLIP embedding (0-1)")  # fmt: skip
    p.add_argument("--resample", type=positive_int, default=1,
                   help="RePaint's resampling: each step this many times (ddim, ddpm or unclip)")  # fmt: skip
    p.add_argument("--blend", type=positive_int, help="pixels of the seam inside the mask (default: size / 32)")
    add_pipeline_args(p, "edit k of the run uses seed SEED + k")


def run_edit(args) -> int:
    import sys

    from unclip.inpaint import check_edit_options, first_stage
    from unclip.masks import read_canvas

    pad = args.pad if args.pad is not None else args.expand if args.expand else None
    canvas = read_canvas(_image_file(args.image), args.mask, pad)  # every check of the input before the model loads
    check_edit_options(args.image_weight, args.resample, args.blend)
    canvas.check_region()
    if canvas.fraction == 1:
        print("note: the mask covers the whole picture: this is plain generation from the prompt", file=sys.stderr)
    pipe, out = load_pipeline(args, first_stage(args.image_weight))
    result = pipe.edit(canvas, prompt=args.prompt, negative_prompt=args.negative_prompt,
                       num_images_per_prompt=args.num_images, seed=args.seed, size=args.size,
                       image_weight=args.image_weight, resample=args.resample, blend=args.blend,
                       **sampling_kwargs(args))  # fmt: skip
    save_result(out, result)
    return 0


# name → (help, add_args, run), registered in unclip.cli.COMMANDS
COMMANDS = {
    "vary": ("image → variations of it (DALL·E 2 §3.1)", add_vary_args, run_vary),
    "interpolate": ("two images or prompts → the frames between them (§3.2)", add_interpolate_args, run_interpolate),
    "diff": ("an image and a change of caption → the image edited along it (§3.3)", add_diff_args, run_diff),
    "edit": (
        "an image, a mask and a prompt → the masked region repainted (inpainting, outpainting)",
        add_edit_args,
        run_edit,
    ),  # fmt: skip
}
