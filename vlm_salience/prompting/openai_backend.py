"""OpenAI-compatible chat-completions backend (a vLLM server, or a hosted model).

Retries only where retrying can help: timeouts, connection errors, 408, 425, 429 and 5xx (not 501 or 505), with
exponential backoff, or after the server's `Retry-After` (seconds or an HTTP date) where it sends one. A client
error is never retried: 401, 403 and 404 say the key, the model or the URL is wrong for every item, so they stop
the run with the server's message; other 4xx (e.g. 400 for one oversized image) fail that item with the server's
message. Each request has a timeout of its own (`timeout_s`, for the whole request, connect to last byte); a
concurrency limit; log-probabilities when the server offers them (used for label scoring of the answer's first
value token). The API key is read from the environment variable the config names, sent only in the request header, and
never written to caches, logs, results or reports.
"""

from __future__ import annotations

import base64
import email.utils
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
from vlm_salience.errors import VlmSalienceError
from vlm_salience.prompting.answers import Slot
from vlm_salience.prompting.images import ItemError
from vlm_salience.prompting.inputs import Prompt

FATAL_STATUS = {401: "the API key is missing or wrong", 403: "the key may not use this model",
                404: "no such model or URL"}


def retryable(status: int) -> bool:
    """Whether a later attempt can get another answer: overload, rate limits, server faults (not 'not
    implemented' nor 'HTTP version not supported', which stay the same)."""
    return status in (408, 425, 429) or (500 <= status < 600 and status not in (501, 505))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _server_message(r) -> str:
    """The server's own explanation: OpenAI-style {"error": {"message": ...}}, else the body's text."""
    try:
        data = r.json()
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
        if msg:
            return str(msg)[:500]
    except (ValueError, AttributeError):
        pass
    return (r.text or "").strip()[:500] or "(no message)"


class APIRequestError(VlmSalienceError):
    """The server refuses every request of this config (401, 403, 404): retrying or going on cannot help."""


def _sleep(seconds: float) -> None:  # one place to wait, so that tests can record the waits
    time.sleep(seconds)


class APIModelConfig(StrictModel):
    backend: Literal["openai"] = "openai"
    name: str
    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the name of the variable holding the key, never the key
    timeout_s: float = Field(60.0, gt=0)  # per request, connect to last byte
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_wait_s: float = Field(300.0, ge=0)  # the longest wait before a retry, Retry-After included
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
        """Server, model and every decoding parameter an answer depends on (never the key)."""
        c = self.cfg
        return hashlib.sha256(json.dumps([c.base_url, c.model, c.temperature, c.max_tokens, c.logprobs,
                                          c.top_logprobs]).encode()).hexdigest()[:16]

    def close(self) -> None:
        self._client.close()

    # -- one request with retries -----------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last, wait = "no attempt", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                backoff = self.cfg.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                _sleep(min(self.cfg.max_wait_s, backoff if wait is None else max(wait, 0.0)))
            wait = None
            try:
                with self._slots:
                    with self._lock:
                        self.requests_sent += 1
                    r = self._send(body)
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
            message = _server_message(r)
            last = f"server answered HTTP {r.status_code}: {message}"
            if r.status_code in FATAL_STATUS:
                raise APIRequestError(
                    f"{self.cfg.base_url} answered HTTP {r.status_code} for model '{self.cfg.model}' "
                    f"({FATAL_STATUS[r.status_code]}): {message}. Fix: check base_url, model and the key in "
                    f"${self.cfg.api_key_env or '(no api_key_env set)'}.")
            if not retryable(r.status_code):
                raise ItemError(last)
            wait = retry_after_s(r.headers.get("Retry-After"))
        raise ItemError(f"{last} (after {self.cfg.max_retries} retries)")

    def _send(self, body: dict[str, Any]):
        """One POST whose total time is bounded by timeout_s (httpx bounds each phase, not the sum)."""
        import httpx

        deadline = time.monotonic() + self.cfg.timeout_s
        with self._client.stream("POST", "/chat/completions", json=body) as r:
            chunks = []
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"request took longer than {self.cfg.timeout_s:g} s")
            return httpx.Response(r.status_code, headers=r.headers, content=b"".join(chunks), request=r.request)

    def _request(self, prompt: Prompt, max_tokens: int, logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": to_openai_messages(prompt),
                                "max_tokens": max_tokens, "temperature": self.cfg.temperature}
        if logprobs:
            body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
        return self._post(body)

    def _map(self, fn, prompts: list[Prompt], on_batch=None) -> list[Any]:
        """fn on every prompt, `concurrency` at a time; an APIRequestError stops the prompts not yet sent."""
        fatal: list[APIRequestError] = []

        def run(p):
            if fatal:
                return None
            try:
                return fn(p)
            except ItemError as exc:
                return exc
            except APIRequestError as exc:
                fatal.append(exc)
                return None
            finally:
                if on_batch and not fatal:
                    on_batch(1)
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            out = list(pool.map(run, prompts))
        if fatal:
            raise fatal[0]
        return out

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
