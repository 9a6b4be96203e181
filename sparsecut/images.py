"""Open user images safely and turn any PIL mode into 8-bit RGB, with a specific error for each bad input."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger images are refused as possible decompression bombs


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message says what is wrong and how to fix it."""


def _describe(source, name: str | None = None) -> str:
    """The subject of an error message: ``name`` (e.g. "the uploaded image") if given, else the path or the type."""
    if name:
        return name[0].upper() + name[1:]
    if isinstance(source, (str, os.PathLike)):
        return f"Image '{os.fspath(source)}'"
    return f"The given {type(source).__name__}"


def _open(source, name: str | None = None) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ImageLoadError(f"{_describe(source, name)} does not exist.")
        with open(path, "rb") as handle:
            data = handle.read()
    elif hasattr(source, "read"):
        data = source.read()
    else:
        raise ImageLoadError(f"Expected a PIL image, a path, bytes or a file object; got {type(source).__name__}.")
    if len(data) == 0:
        raise ImageLoadError(f"{_describe(source, name)} is an empty file (0 bytes).")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{_describe(source, name)} looks like a decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(
            f"{_describe(source, name)} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)."
        ) from err
    except (OSError, SyntaxError) as err:
        raise _corrupt(source, err, name) from err


def _corrupt(source, err: Exception, name: str | None = None) -> ImageLoadError:
    return ImageLoadError(f"{_describe(source, name)} is truncated or corrupt ({err}). Re-export or re-download it.")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB: alpha composited on white, 16-bit and float scaled to 8 bits, CMYK/palette/greyscale converted."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if array.size and array.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if mode.startswith("I;16") or (array.size and array.max() > 255) else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open ``source`` (PIL image, path, bytes or file object) as an upright 8-bit RGB image.

    Applies the EXIF orientation; raises ``ImageLoadError`` for a missing, empty, non-image, truncated or
    oversized (decompression-bomb) input. Messages name ``name`` (e.g. "the uploaded image": a server never shows
    its temporary paths) or else the path."""
    image = _open(source, name)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{_describe(source, name)} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a possible decompression bomb). Downscale it, or raise max_pixels if you trust it."
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError) as err:
        raise _corrupt(source, err, name) from err
    return _to_rgb(image)


def pixels_sha256(image: Image.Image) -> str:
    """sha256 of an image's decoded pixels (8-bit RGB bytes and size): the same picture whatever file carries it."""
    image = image.convert("RGB")
    return hashlib.sha256(image.tobytes() + f"{image.size}".encode()).hexdigest()
