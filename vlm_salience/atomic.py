"""Atomic writes: a reader (or a crash) never sees a half-written file or output folder.

The temporary files and folders that become outputs are created private (0600 / 0700) by `tempfile`; they are
given the mode an ordinary `open`/`mkdir` would have (0666 / 0777 less the umask) before they are renamed into
place, so collaborators read results as they read any other file the user writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from everyone else
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
    os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the output folder from everyone else
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
