"""Corpus loaders. Nothing outside this package knows a file format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlm_salience.data.config import (
    CueTablesConfig, DataConfig, GoldenBallsConfig, SplitStealConfig, load_data_config,
)
from vlm_salience.data.corpus import Corpus, DropReport, Face, Item, Judgements, RatingScale, Situation


def load_corpus(config: DataConfig | str | Path, *, drop_invalid: bool = False,
                overrides: list[str] | tuple[str, ...] = ()) -> Corpus:
    """Load a corpus from a data config (a path to its YAML, or the parsed config)."""
    if not isinstance(config, (CueTablesConfig, GoldenBallsConfig, SplitStealConfig)):
        config = load_data_config(config, overrides)
    if isinstance(config, CueTablesConfig):
        from vlm_salience.data.cue_tables import load_cue_tables as loader
    elif isinstance(config, GoldenBallsConfig):
        from vlm_salience.data.golden_balls import load_golden_balls as loader
    else:
        from vlm_salience.data.split_steal import load_split_steal as loader
    corpus = loader(config, drop_invalid=drop_invalid)
    corpus.fingerprint = fingerprint(config)
    return corpus


def fingerprint(config: DataConfig) -> str:
    """A hash of the config and the bytes of every file it reads: caches and indexes check it."""
    h = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    files = config.files.model_dump()
    for name in sorted(files):
        if files[name]:
            path = Path(config.root) / files[name]
            if path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


__all__ = [
    "Corpus", "DataConfig", "DropReport", "Face", "Item", "Judgements", "RatingScale", "Situation", "load_corpus",
    "load_data_config", "fingerprint",
]
