"""Input images of the edit methods (variations, interpolation, text diffs): PIL images, files, or tensors.

from unclip.images import load_images, fit
pictures = load_images(["cat.png", Image.open("dog.jpg")])  # a list of (3, H, W) tensors in [0, 1]
batch = fit(pictures, 64)                                     # (2, 3, 64, 64): shorter side, center crop
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unclip.clip_models import resize_center_crop
from unclip.errors import UnclipError

ImageInput = Image.Image | str | Path | torch.Tensor


def open_image(path: str | Path, what: str = "image", fix: str = "give a PNG or JPEG file") -> Image.Image:
    """The picture in a file, loaded whole and in its own mode (alpha kept); ``UnclipError`` naming ``what`` and
    ``fix`` when the file is missing or not an image. The one opener of ``load_images``, masks and metrics."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UnclipError(f"{what} {path} does not exist: {fix}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise UnclipError(f"{what} {path} cannot be read as an image ({type(err).__name__}): {fix}") from None


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """A PIL picture as a (3, H, W) float tensor in [0, 1] (RGB)."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _one(image: ImageInput) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        return to_tensor(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UnclipError(f"an image tensor must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        return image.detach().float().cpu().clamp(0, 1)
    raise UnclipError(f"an image must be a PIL image, a file path or a (3, H, W) tensor, got {type(image).__name__}")


def load_images(images: ImageInput | list[ImageInput]) -> list[torch.Tensor]:
    """Each image as a (3, H, W) float tensor in [0, 1]; a (B, 3, H, W) tensor gives B of them."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise UnclipError("no image given: give at least one PNG or JPEG file")
    return [_one(item) for item in items]


def fit(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(B, 3, size, size) in [0, 1]: each image's shorter side to ``size`` (bicubic, antialiased), center crop."""
    return torch.cat([resize_center_crop(image[None], size).clamp(0, 1) for image in images])
