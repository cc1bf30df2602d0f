"""Which files are images a project can train on (checked by decoding, not by name)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from edgewire.errors import DataError, FrameTooLarge

#: What Pillow's format names are stored as.
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}
#: Larger images are refused (a decompression bomb, or not a camera frame).
MAX_PIXELS = 64_000_000


def readable_image(path: Path) -> str | None:
    """The suffix to store ``path`` under if it is a whole, readable image, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                fmt = image.format
                if image.width * image.height > MAX_PIXELS:
                    return None
                image.load()  # a truncated file fails here, not at training time
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):  # fmt: skip
        return None
    return _SUFFIXES.get(fmt or "")


def to_png(path: Path) -> bytes:
    """``path`` (a readable image) as PNG bytes."""
    with Image.open(path) as image:
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


#: What an image sent over the network may be (a browser's camera gives JPEG or WebP).
NETWORK_FORMATS = ("JPEG", "PNG", "WEBP")


def check_image_bytes(data: bytes, *, max_pixels: int) -> tuple[bytes, str]:
    """``data`` as a workspace stores it (WebP as PNG) and its suffix, if it is one whole
    JPEG, PNG or WebP image of at most ``max_pixels``; else one line saying why.

    The size is read from the header and checked before anything is decoded: a
    small file that declares a huge image (a decompression bomb) is refused unread.
    """
    # No warnings.catch_warnings() here: it changes the whole process's filters and two
    # decoders run at once. The pixel cap below is far under Pillow's own bomb limit.
    try:
        with Image.open(io.BytesIO(data), formats=NETWORK_FORMATS) as image:
            fmt, (width, height) = image.format, image.size
            if width * height > max_pixels:
                raise FrameTooLarge(
                    f"an image of {width}x{height} pixels is over the limit of "
                    f"{max_pixels} pixels; send a smaller one"
                )
            image.load()  # a truncated file fails here, not at training time
            if fmt == "WEBP":  # what the image-folder reader does not read
                out = io.BytesIO()
                image.save(out, format="PNG")
                return out.getvalue(), ".png"
    except FrameTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FrameTooLarge(
            f"the image declares more than {max_pixels} pixels; send a smaller one"
        ) from None
    except Exception:  # any decoder failure on bytes from the network
        raise DataError("the body is not one whole JPEG, PNG or WebP image") from None
    return data, _SUFFIXES[fmt or "JPEG"]


def thumbnail_jpeg(path: Path, *, side: int, max_pixels: int) -> bytes:
    """A JPEG of the image at ``path`` whose longest side is at most ``side`` pixels."""
    try:
        with Image.open(path) as image:  # (no catch_warnings: see check_image_bytes)
            if image.width * image.height > max_pixels:
                raise FrameTooLarge(f"the image is over {max_pixels} pixels")
            image.draft("RGB", (side, side))  # a JPEG decodes at 1/2 .. 1/8 scale
            small = image.convert("RGB")
        small.thumbnail((side, side))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=80)
    except FrameTooLarge:
        raise
    except Exception:  # a file that stopped being a readable image
        raise DataError("the image cannot be read any more; delete it") from None
    return out.getvalue()
