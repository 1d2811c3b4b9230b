"""Identity of a model checkpoint, for refusing a resume or a cache built on another model."""

from __future__ import annotations

import hashlib
from pathlib import Path


def checkpoint_fingerprint(path: str | Path) -> str:
    """A checkpoint folder by its config and the names and sizes of its weight files (cheap: weights are not
    read); a hub id by its name."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
        for f in sorted(path.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        h.update(str(path).encode())  # a hub id
    return h.hexdigest()[:16]
