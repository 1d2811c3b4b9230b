"""Atomic writes: a reader (or a crash) never sees a half-written file or output folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _stage(out: Path, kind: str) -> Iterator[Path]:
    """Yield (once) an empty folder beside `out`, removed again if the caller's block fails; return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success its files move into `out`, on failure it vanishes.

    Files already in `out` that the job does not rewrite are left alone: `--out` may be a folder the user keeps
    other things in. Each move is an atomic rename on the same file system.
    """
    out = Path(out)
    stage = yield from _stage(out, "staging")
    if not out.exists():
        os.replace(stage, out)
        return
    for src in sorted(stage.rglob("*")):
        dst = out / src.relative_to(stage)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def replaced_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `out` as a whole when the block succeeds.

    For artefacts that only make sense complete (a retrieval index): an interrupted build leaves the previous
    folder untouched, and readers never see a mix of old and new files.
    """
    out = Path(out)
    stage = yield from _stage(out, "building")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
