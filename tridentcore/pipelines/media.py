"""Writing stage outputs to files: PNG/JPEG images, animated WebP/GIF for video frames."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
ANIMATION_SUFFIXES = {".webp": "WEBP", ".gif": "GIF"}


def _frames(array) -> np.ndarray:
    arr = array.numpy() if hasattr(array, "numpy") else np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    return arr


def encode_image(pixels, fmt: str = "PNG") -> bytes:
    """One ``[H, W, 3]`` uint8 image as file bytes (deterministic for the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_frames(pixels)).save(buf, format=fmt)
    return buf.getvalue()


def encode_animation(frames, fmt: str = "WEBP", fps: int = 8) -> bytes:
    """``[F, H, W, 3]`` uint8 frames as an animated WebP or GIF that loops."""
    from PIL import Image

    arr = _frames(frames)
    images = [Image.fromarray(f) for f in arr]
    buf = io.BytesIO()
    kwargs = dict(save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    if fmt == "WEBP":
        kwargs["lossless"] = True
    images[0].save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def check_output_path(path: str | Path, frames: int | None = None) -> None:
    """What can be told of an output path before anything is made: a known format (an animation's
    for ``frames`` > 1), and not a folder or under a file (ValueError, saying which). Whether the place
    can be written is the CLI's ``check_out``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES and suffix not in ANIMATION_SUFFIXES:
        raise ValueError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; use one of "
                         f"{', '.join(sorted({*IMAGE_SUFFIXES, *ANIMATION_SUFFIXES}))}")
    if frames is not None and frames > 1 and suffix not in ANIMATION_SUFFIXES:
        raise ValueError(f"{path}: {frames} frames need an animation format: {', '.join(ANIMATION_SUFFIXES)}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is not a folder")


def save_output(pixels, path: str | Path, fps: int = 8) -> Path:
    """Write one request's output: ``[H, W, 3]`` as an image, ``[F, H, W, 3]`` as an animation."""
    path = Path(path)
    suffix = path.suffix.lower()
    arr = _frames(pixels)
    if arr.ndim == 4 and arr.shape[0] > 1:
        if suffix not in ANIMATION_SUFFIXES:
            raise ValueError(f"{arr.shape[0]} frames need an animation format: {', '.join(ANIMATION_SUFFIXES)} (got {path.name})")
        data = encode_animation(arr, ANIMATION_SUFFIXES[suffix], fps)
    else:
        if arr.ndim == 4:
            arr = arr[0]
        if suffix not in IMAGE_SUFFIXES and suffix != ".gif":
            raise ValueError(f"unknown image format {suffix!r}; use one of {', '.join(sorted(IMAGE_SUFFIXES))}")
        data = encode_image(arr, IMAGE_SUFFIXES.get(suffix, "GIF"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all (a Ctrl-C or a full disk while writing would leave part of an image under the
    # name): written beside it (beside what a link points at), then renamed over it
    dest = Path(os.path.realpath(path))
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path
