"""Answer cache: every model answer keyed by model, template, item and parameters, so that an interrupted run
resumes without redoing work. SQLite, one row per answer, committed per batch."""

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


class AnswerCache:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = keys[s:s + 500]
                q = f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in self._db.execute(q, chunk):
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
