"""Reading one face image for a prompt, below both `inputs.py` and `clips.py` (a frame list is read the same way),
so that neither imports the other."""

from __future__ import annotations

from typing import Any


class ItemError(Exception):
    """A per-item failure: the item's prediction carries the message and the run continues."""


def load_image(path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file fails here, not inside the model
            return img.convert("RGB")
    except FileNotFoundError:
        raise ItemError(f"face image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ItemError(f"unreadable or truncated image {path} ({exc})") from None
