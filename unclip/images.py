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


def _one(image: ImageInput) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise UnclipError(f"image {path} does not exist: give a PNG or JPEG file")
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise UnclipError(f"image {path} cannot be read ({type(err).__name__}): give a PNG or JPEG file") from None
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)
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
