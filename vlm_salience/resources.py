"""Where the shipped configs/ and prompts/ live: beside the package in a checkout, or under $VLM_SALIENCE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

from vlm_salience.errors import ConfigError


def home() -> Path:
    env = os.environ.get("VLM_SALIENCE_HOME")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parent.parent, Path.cwd()]
    for c in candidates:
        if (c / "configs").is_dir():
            return c
    raise ConfigError("cannot find the shipped configs/ folder. Fix: run from a checkout of vlm_salience or set "
                      "VLM_SALIENCE_HOME to one.")


def shipped(relative: str) -> Path:
    path = home() / relative
    if not path.exists():
        raise ConfigError(f"shipped file {relative} not found under {home()}.")
    return path
