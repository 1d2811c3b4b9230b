"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1, started by the test."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.conftest import REPO
from vlm_salience.data import load_corpus
from vlm_salience.prompting.answers import AnswerSpec
from vlm_salience.prompting.inputs import ItemError, build_prompt
from vlm_salience.prompting.openai_backend import APIModelConfig, OpenAIBackend
from vlm_salience.prompting.templates import load_template

KEY = "sk-test-do-not-leak-0123456789"


def _answer_tokens(emotion: str, valence: int, with_logprobs: bool):
    """The answer split into tokens the way a server reports them, with top alternatives at the values."""
    pieces = ['{"', "valence", '":', " ", str(valence), ",", ' "', "emotion", '":', ' "', emotion, '"}']
    out = []
    for p in pieces:
        entry = {"token": p, "logprob": -0.01, "top_logprobs": [{"token": p, "logprob": -0.01}]}
        if p == str(valence):
            entry["top_logprobs"] = [{"token": str(valence), "logprob": np.log(0.7)},
                                     {"token": str(valence - 1), "logprob": np.log(0.2)},
                                     {"token": str(valence + 1), "logprob": np.log(0.1)}]
        if p == emotion:
            entry["top_logprobs"] = [{"token": emotion, "logprob": np.log(0.6)},
                                     {"token": "sad", "logprob": np.log(0.3)},  # starts "sadness"
                                     {"token": "blah", "logprob": np.log(0.1)}]
        out.append(entry)
    return "".join(pieces), (out if with_logprobs else None)


class FakeServer:
    def __init__(self):
        self.requests, self.in_flight, self.max_in_flight = [], 0, 0
        self.fail_first = 0
        self.script = []  # (status, headers, body) answered to the next requests, in order
        self.trickle = None  # (chunks, seconds between chunks): a 200 answer sent slowly
        self.slow_marker = None
        self.logprobs = True
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.fail_first > 0
                    server.fail_first -= 1
                    scripted = server.script.pop(0) if server.script else None
                try:
                    if scripted is not None:
                        status, headers, payload = scripted
                        self.send_response(status)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    time.sleep(0.05)
                    text = json.dumps(body["messages"])
                    if server.slow_marker and server.slow_marker in text:
                        time.sleep(1.0)
                    if fail:
                        self.send_response(500)
                        self.end_headers()
                        self.wfile.write(b"overloaded")
                        return
                    if self.headers.get("Authorization") != f"Bearer {KEY}":
                        self.send_response(401)
                        self.end_headers()
                        return
                    content, tokens = _answer_tokens("joy", 5, server.logprobs and body.get("logprobs"))
                    choice = {"message": {"role": "assistant", "content": content}}
                    if tokens:
                        choice["logprobs"] = {"content": tokens}
                    payload = json.dumps({"choices": [choice]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if server.trickle:
                        n, gap = server.trickle
                        step = -(-len(payload) // n)
                        for s in range(0, len(payload), step):
                            self.wfile.write(payload[s:s + step])
                            self.wfile.flush()
                            time.sleep(gap)
                        return
                    self.wfile.write(payload)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("VLMS_TEST_KEY", KEY)
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def prompts(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    spec = AnswerSpec.from_corpus(c)
    return [build_prompt(load_template("combined"), it, spec) for it in c.items[:6]], spec


def _cfg(server, **kw):
    return APIModelConfig(name="api", model="served-vlm", base_url=server.url, api_key_env="VLMS_TEST_KEY",
                          backoff_s=0.01, **kw)


def test_scores_from_logprobs_with_a_concurrency_limit(server, prompts):
    ps, spec = prompts
    backend = OpenAIBackend(_cfg(server, concurrency=2))
    out = backend.score(ps, spec.slots())
    assert len(out) == 6 and server.max_in_flight <= 2
    emo = np.exp(out[0]["emotion"])
    emo /= emo.sum()
    assert emo.argmax() == spec.labels.index("joy") and emo[spec.labels.index("sadness")] > 0.2
    val = np.exp(out[0]["valence"])
    val /= val.sum()
    assert val.argmax() == 4 and val[3] > val[5] > 0  # 5 (0.7), then 4 (0.2), then 6 (0.1)
    body = server.requests[0]["body"]
    parts = body["messages"][1]["content"]
    assert any(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/png;base64,")
               for p in parts)  # the image travels as an image, not as a file name
    assert body["logprobs"] is True and server.requests[0]["auth"] == f"Bearer {KEY}"


def test_retries_500s_with_backoff(server, prompts):
    ps, _ = prompts
    server.fail_first = 2
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3))
    texts = backend.generate(ps[:1], 32)
    assert texts[0].startswith('{"valence": 5') and backend.retries == 2 and len(server.requests) == 3


def test_persistent_errors_and_timeouts_become_per_item_errors(server, prompts):
    ps, spec = prompts
    server.fail_first = 100
    backend = OpenAIBackend(_cfg(server, concurrency=2, max_retries=1))
    out = backend.generate(ps[:2], 16)
    assert all(isinstance(o, ItemError) and "HTTP 500: overloaded (after 1 retries)" in str(o) for o in out)
    server.fail_first = 0
    server.slow_marker = ps[1].text.split("<situation>")[1].split("</situation>")[0]  # only item 1 is slow
    backend = OpenAIBackend(_cfg(server, concurrency=2, max_retries=0, timeout_s=0.4))
    out = backend.score(ps[:3], spec.slots())
    assert isinstance(out[1], ItemError) and "timed out" in str(out[1])
    assert isinstance(out[0], dict) and isinstance(out[2], dict)


def test_api_keys_come_from_the_environment_only():
    with pytest.raises(ValueError, match="environment only"):
        APIModelConfig(name="x", model="m", api_key="sk-123")


def test_an_experiment_against_the_server_keeps_the_key_out_of_every_file(server, tmp_path, small_synth_corpus):
    from vlm_salience.prompting.experiment import ExperimentConfig, run_experiment
    from vlm_salience.prompting.report import write_experiment_outputs

    server.logprobs = False  # this server offers no logprobs: answers are read by generate-and-parse
    cfg = ExperimentConfig.model_validate({
        "name": "api", "data": str(small_synth_corpus),
        "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "group": "participant"},
        "models": [{"backend": "openai", "name": "api", "model": "served-vlm", "base_url": server.url,
                    "api_key_env": "VLMS_TEST_KEY", "concurrency": 3, "backoff_s": 0.01}],
        "strategies": [{"name": "combined", "template": "combined"}], "out": str(tmp_path / "out"),
        "bootstrap": 20,
    })
    res = run_experiment(cfg, progress=False)
    pred = res.predictions["api/combined"]
    assert pred.ok.all() and np.allclose(pred.valence, 5.0)
    assert any("generate-and-parse" in n for n in res.notes)
    write_experiment_outputs(res, cfg.out)
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


# ---------------------------------------------------------------------------------------------------------------
# Retries only where retrying can help

@pytest.fixture
def waits(monkeypatch):
    """Every wait before a retry, recorded instead of slept."""
    from vlm_salience.prompting import openai_backend

    seen = []
    monkeypatch.setattr(openai_backend, "_sleep", seen.append)
    return seen


def _err(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried_and_the_server_message_reaches_the_item(server, prompts, waits, status):
    ps, _ = prompts
    server.script = [(status, {}, _err("image too large: 9000x9000"))]
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3))
    out = backend.generate(ps[:1], 16)
    assert isinstance(out[0], ItemError) and f"HTTP {status}" in str(out[0])
    assert "image too large: 9000x9000" in str(out[0])
    assert len(server.requests) == 1 and backend.retries == 0 and waits == []


@pytest.mark.parametrize("status", [401, 403, 404])
def test_key_model_or_url_errors_stop_the_run_with_the_server_message(server, prompts, waits, status):
    from vlm_salience.errors import VlmSalienceError
    from vlm_salience.prompting.openai_backend import APIRequestError

    ps, spec = prompts
    server.script = [(status, {}, _err("Incorrect API key provided: sk-te***"))] * 3
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3))
    with pytest.raises(APIRequestError, match=f"HTTP {status}.*Incorrect API key provided") as exc:
        backend.score(ps[:3], spec.slots())
    assert isinstance(exc.value, VlmSalienceError) and "VLMS_TEST_KEY" in str(exc.value)
    assert KEY not in str(exc.value)
    assert len(server.requests) == 1 and waits == []  # the first item's answer stops the run


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
def test_transient_statuses_are_retried(server, prompts, waits, status):
    ps, _ = prompts
    server.script = [(status, {}, _err("busy"))] * 2
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3))
    out = backend.generate(ps[:1], 16)
    assert out[0].startswith('{"valence": 5') and len(server.requests) == 3 and backend.retries == 2
    assert len(waits) == 2 and 0 < waits[0] <= 0.01 and 0 < waits[1] <= 0.02  # exponential backoff, jittered


@pytest.mark.parametrize("status", [501, 505])
def test_statuses_that_stay_the_same_are_not_retried(server, prompts, waits, status):
    ps, _ = prompts
    server.script = [(status, {}, b"not implemented")]
    out = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3)).generate(ps[:1], 16)
    assert isinstance(out[0], ItemError) and "not implemented" in str(out[0]) and len(server.requests) == 1


def test_retry_after_in_seconds_and_as_an_http_date_is_honoured(server, prompts, waits):
    import email.utils

    ps, _ = prompts
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.script = [(429, {"Retry-After": "7"}, _err("rate limited")), (503, {"Retry-After": date}, b"down")]
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=3))
    out = backend.generate(ps[:1], 16)
    assert out[0].startswith('{"valence": 5')
    assert waits[0] == 7.0  # not the 0.01 s backoff
    assert 25 < waits[1] <= 30  # the date, less the time since it was written
    server.script = [(429, {"Retry-After": "100000"}, b"")]
    OpenAIBackend(_cfg(server, concurrency=1, max_retries=1, max_wait_s=60)).generate(ps[:1], 16)
    assert waits[-1] == 60  # capped by max_wait_s


def test_retry_after_parsing():
    from vlm_salience.prompting.openai_backend import retry_after_s

    assert retry_after_s("120") == 120 and retry_after_s(" 1.5 ") == 1.5 and retry_after_s("-3") == 0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == pytest.approx(60)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0  # in the past: now
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("") is None


def test_timeout_bounds_the_whole_request_not_each_read(server, prompts, waits):
    ps, _ = prompts
    server.trickle = (8, 0.15)  # every read is quick (0.15 s), the whole answer takes 1.2 s
    backend = OpenAIBackend(_cfg(server, concurrency=1, max_retries=1, timeout_s=0.5))
    out = backend.generate(ps[:1], 16)
    assert isinstance(out[0], ItemError) and "timed out after 0.5 s (after 1 retries)" in str(out[0])
    assert len(server.requests) == 2 and len(waits) == 1  # a timeout is retried
    server.trickle = None
    assert OpenAIBackend(_cfg(server, concurrency=1, timeout_s=0.5)).generate(ps[:1], 16)[0].startswith("{")


def test_connection_errors_are_retried(prompts, waits):
    import socket

    ps, _ = prompts
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = APIModelConfig(name="api", model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None,
                         backoff_s=0.01, max_retries=2)
    out = OpenAIBackend(cfg).generate(ps[:1], 16)
    assert isinstance(out[0], ItemError) and "connection failed" in str(out[0]) and len(waits) == 2
