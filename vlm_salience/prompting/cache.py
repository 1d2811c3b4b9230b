"""Answer cache: every model answer keyed by model, template, item and parameters, so that an interrupted run
resumes without redoing work. SQLite, one row per answer, committed per batch.

Under `accelerate launch` (vlm_salience/ranks.py) there is still one cache: during the run each rank reads it and
writes only its own shard beside it (`cache.rank<r>.sqlite`, one writer per file: no two processes write one SQLite
file, which network file systems do not lock reliably); at the end rank 0 merges the shards into it in one
transaction and deletes them. A killed launch leaves its shards, every answer committed per chunk: the next run, on
any number of processes, merges them first, so only the missing answers are asked again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


SCORING_VERSION = 2  # bump when label scoring or answer reading changes what a cached answer would be


def answer_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def prompt_answer_key(model: str, template_digest: str, prompt, read: str, *, max_new_tokens: int | None = None,
                      slots: list | None = None) -> str:
    """The key of one answer: everything the answer depends on, and nothing else.

    - model: the backend's fingerprint (weights, precision, quantisation; server, model, decoding parameters)
    - template_digest: the template file and its includes; prompt.digest: the rendered messages and image bytes
      (few-shot examples included), prompt.item_id: the item
    - read: score or generate; generate: max_new_tokens; score: each slot's name, prefix, candidates and
      terminators (what is scored, and how a value ends)
    """
    params: dict[str, Any] = {"read": read}
    if read == "generate":
        params["max_new_tokens"] = max_new_tokens
    else:
        params["slots"] = [[s.name, s.prefix, list(s.candidates), list(s.terminators)] for s in slots or []]
    return answer_key(model=model, template=prompt.template, template_digest=template_digest,
                      prompt=prompt.digest, item=prompt.item_id, version=SCORING_VERSION, **params)


TABLE = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def shard_path(path: str | Path, rank: int) -> Path:
    """Rank `rank`'s shard of the cache at `path` (cache.sqlite -> cache.rank1.sqlite)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def shard_paths(path: str | Path) -> list[Path]:
    """The shards beside the cache at `path` (a finished launch leaves none; a killed one, its ranks')."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def _open(path: Path, wal: bool) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute(TABLE)
    db.commit()
    return db


def merge_shards(path: str | Path) -> int:
    """Every shard's answers into the cache at `path`, in one transaction, then the shards deleted (a merge cut
    short leaves them, and merging again is harmless). Returns the number of answers merged."""
    path = Path(path)
    shards = shard_paths(path)
    if not shards:
        return 0
    db = _open(path, wal=True)
    merged = 0
    try:
        for shard in shards:
            db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            try:
                db.execute(TABLE.replace("answers", "shard.answers"))
                merged += db.execute("INSERT OR REPLACE INTO answers (key, value) SELECT key, value FROM "
                                     "shard.answers").rowcount
                db.commit()
            finally:
                db.execute("DETACH DATABASE shard")
        for shard in shards:
            for f in (shard, shard.with_name(shard.name + "-journal")):
                f.unlink(missing_ok=True)
    finally:
        db.close()
    return merged


class AnswerCache:
    """rank None: one process, reading and writing `path` (a killed launch's shards are merged in first).
    rank r: rank r of a launch, reading `path` and its own shard, writing only the shard (`open_answer_cache`)."""

    def __init__(self, path: str | Path | None, *, rank: int | None = None) -> None:
        self.path = Path(path) if path else None
        self.rank = rank
        self._lock = threading.Lock()
        self._main: sqlite3.Connection | None = None  # read-only during a launch: rank 0 merges into it at the end
        if self.path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
            self._db.execute(TABLE)
        elif rank is None:
            merge_shards(self.path)
            self._db = _open(self.path, wal=True)
        else:
            self._main = _open(self.path, wal=False)
            self._db = _open(shard_path(self.path, rank), wal=False)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for db in (self._main, self._db):
                if db is None:
                    continue
                for s in range(0, len(keys), 500):
                    chunk = keys[s:s + 500]
                    q = f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
                    for k, v in db.execute(q, chunk):
                        out[k] = json.loads(v)
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in items.items()])
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
        if self._main is not None:
            self._main.close()


def open_answer_cache(path: str | Path | None, ranks=None) -> AnswerCache:
    """The answer cache for this process. One process: `AnswerCache(path)`. Under a launch (`ranks`, a
    vlm_salience.ranks.Ranks with world > 1): rank 0 first merges a killed launch's shards, every rank waits for
    it, then each reads the cache and writes its own shard. Pair with `close_answer_cache`."""
    if ranks is None or ranks.world == 1 or path is None:
        return AnswerCache(path)
    if ranks.is_main:
        merge_shards(path)
        _open(Path(path), wal=True).close()  # the cache exists before any rank opens it
    ranks.barrier()
    return AnswerCache(path, rank=ranks.rank)


def close_answer_cache(cache: AnswerCache, ranks=None) -> None:
    """The normal end of a run: under a launch, once every rank has written its shard, rank 0 merges the shards
    into the one cache and the others wait for it (after this the cache is whole for every rank)."""
    cache.close()
    if ranks is None or ranks.world == 1 or cache.path is None:
        return
    ranks.barrier()
    if ranks.is_main:
        merge_shards(cache.path)
    ranks.barrier()
