"""Which files are images a project can train on (checked by decoding, not by name)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

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
    import io

    with Image.open(path) as image:
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()
