"""OpenAI-compatible chat-completions backend (a vLLM server, or a hosted model).

Retries with exponential backoff on timeouts, connection errors, 429 and 5xx; a concurrency limit; per-request
timeouts; log-probabilities when the server offers them (used for label scoring of the answer's first value
token). The API key is read from the environment variable the config names, sent only in the request header, and
never written to caches, logs, results or reports.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from vlm_salience.config import StrictModel
from vlm_salience.prompting.answers import Slot
from vlm_salience.prompting.inputs import ItemError, Prompt

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class APIModelConfig(StrictModel):
    backend: Literal["openai"] = "openai"
    name: str
    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the name of the variable holding the key, never the key
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(4, ge=1)
    max_tokens: int = Field(256, ge=1)
    temperature: float = 0.0
    logprobs: bool = True
    top_logprobs: int = Field(20, ge=1, le=20)

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_configs(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in ("api_key", "key", "token")):
            raise ValueError("API keys come from the environment only: set api_key_env to the variable's name")
        return data


class LogprobsUnavailable(RuntimeError):
    """The server returned no log-probabilities: read answers by generate-and-parse instead."""


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def to_openai_messages(prompt: Prompt) -> list[dict[str, Any]]:
    images = iter(prompt.images)
    out = []
    for m in prompt.messages:
        parts = []
        for p in m["content"]:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            else:
                parts.append({"type": "image_url", "image_url": {"url": _data_url(next(images))}})
        out.append({"role": m["role"], "content": parts})
    return out


class OpenAIBackend:
    kind = "openai"

    def __init__(self, cfg: APIModelConfig) -> None:
        import httpx

        self.cfg = cfg
        headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers,
                                    timeout=httpx.Timeout(cfg.timeout_s))
        self._slots = threading.BoundedSemaphore(cfg.concurrency)
        self.requests_sent = 0
        self.retries = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.cfg.name

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.cfg.base_url, self.cfg.model, self.cfg.temperature,
                                          self.cfg.max_tokens]).encode()).hexdigest()[:16]

    def close(self) -> None:
        self._client.close()

    # -- one request with retries -----------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.cfg.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            try:
                with self._slots:
                    with self._lock:
                        self.requests_sent += 1
                    r = self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.cfg.timeout_s:g} s"
                continue
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__})"
                continue
            if r.status_code == 200:
                try:
                    return r.json()
                except json.JSONDecodeError:
                    last = "server returned invalid JSON"
                    continue
            last = f"server answered HTTP {r.status_code}"
            if r.status_code not in RETRY_STATUS:
                raise ItemError(f"{last}: {r.text[:200]}")
        raise ItemError(f"{last} (after {self.cfg.max_retries} retries)")

    def _request(self, prompt: Prompt, max_tokens: int, logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": to_openai_messages(prompt),
                                "max_tokens": max_tokens, "temperature": self.cfg.temperature}
        if logprobs:
            body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
        return self._post(body)

    def _map(self, fn, prompts: list[Prompt], on_batch=None) -> list[Any]:
        def run(p):
            try:
                return fn(p)
            except ItemError as exc:
                return exc
            finally:
                if on_batch:
                    on_batch(1)
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(run, prompts))

    # -- the backend interface ----------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], max_new_tokens: int, *, on_batch=None, **_) -> list[str | ItemError]:
        def one(p):
            data = self._request(p, max_new_tokens, logprobs=False)
            try:
                return data["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise ItemError("server response has no choices[0].message.content") from None
        return self._map(one, prompts, on_batch)

    def score(self, prompts: list[Prompt], slots: list[Slot], *, on_batch=None) -> list[dict | ItemError]:
        """Slot distributions from the top log-probabilities at each slot's first value token of the answer."""
        if not self.cfg.logprobs:
            raise LogprobsUnavailable(f"{self.name}: logprobs are turned off in the config")

        def one(p):
            data = self._request(p, self.cfg.max_tokens, logprobs=True)
            try:
                content = data["choices"][0]["logprobs"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
            if not content:
                raise LogprobsUnavailable(f"{self.name}: the server returned no log-probabilities")
            return slot_logprobs(content, slots)
        out = []
        for r in self._map(one, prompts, on_batch):
            if isinstance(r, LogprobsUnavailable):
                raise r
            out.append(r)
        return out


def slot_logprobs(content: list[dict[str, Any]], slots: list[Slot]) -> dict[str, np.ndarray]:
    """Per slot, log-scores of its candidates from the top log-probabilities where the slot's value starts.

    The value's position is found after the slot's key in the generated text. A candidate gets the probability of
    the top tokens it starts with (shared among candidates with the same first token); a candidate no top token
    matches gets a floor below every observed probability.
    """
    tokens = [c["token"] for c in content]
    text, starts = "", []
    for t in tokens:
        starts.append(len(text))
        text += t
    out = {}
    for slot in slots:
        key = slot.prefix.rstrip('" ').rsplit("{", 1)[-1]  # e.g. '"emotion":' or '"happy":'
        at = text.find(key)
        if at < 0:
            raise ItemError(f"answer has no {key} to read log-probabilities from")
        value_at = at + len(key)
        while value_at < len(text) and text[value_at] in ' "':
            value_at += 1
        idx = next((i for i, s in enumerate(starts) if s <= value_at < s + max(len(tokens[i]), 1)), None)
        if idx is None:
            raise ItemError(f"answer ends before the value of {key}")
        top = content[idx].get("top_logprobs") or [{"token": tokens[idx], "logprob": content[idx]["logprob"]}]
        values = [str(c).rstrip('",').lower() for c in slot.candidates]
        mass = np.zeros(len(values))
        for entry in top:
            piece = entry["token"].strip().strip('"').lower()
            if not piece:
                continue
            match = [j for j, v in enumerate(values) if v.startswith(piece)]
            for j in match:
                mass[j] += np.exp(entry["logprob"]) / len(match)
        floor = min([np.exp(e["logprob"]) for e in top] + [1e-6]) / 10
        out[slot.name] = np.log(np.where(mass > 0, mass, floor))
    return out
