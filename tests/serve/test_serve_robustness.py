"""Robustness of `duomind serve`: fuzzed and hand-made bad requests, disconnects mid-stream, bursts over the limit.

Whatever arrives: no 5xx, every error in OpenAI's nested shape, no batch slot left behind, /health green.
Slow tier (a few hundred requests against a real server process): `pytest -m slow tests/serve`.
"""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest
from serve_helpers import running_server

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, "--api_key", KEY, "--max_batch", "4", "--max_waiting", "4",
                        "--max_tokens", "200", "--max_body_bytes", "65536") as url:
        yield url


def send(url: str, method: str, path: str, **kw) -> httpx.Response:
    with httpx.Client(timeout=60) as c:
        with c.stream(method, url + path, **kw) as r:
            r.read()
            return r


def check(r: httpx.Response, where: str) -> None:
    assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, f"{where}: {body}"
        assert body["error"]["message"], where


def idle(url: str, timeout: float = 60.0) -> dict:
    """/health once nothing is running or waiting (waits for cancelled streams to be dropped)."""
    end = time.monotonic() + timeout
    while True:
        h = httpx.get(url + "/health", timeout=10)
        assert h.status_code == 200
        h = h.json()
        if (h["running"] == 0 and h["waiting"] == 0) or time.monotonic() > end:
            return h
        time.sleep(0.1)


def test_schema_fuzzing_gives_no_server_errors(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema_json = httpx.get(server + "/openapi.json", headers=AUTH).json()
    schema = schemathesis.openapi.from_dict(schema_json)
    rng = random.Random(0)
    sent = []
    def fuzzer(path: str, method: str, mode):
        @settings(max_examples=40 if method == "POST" else 10, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(schema[path][method].as_strategy(generation_mode=mode))
        def fuzz(case):
            body = case.body
            if isinstance(body, dict) and rng.random() < 0.5:
                body = {**body, "model": "tiny"}  # get past the model check half of the time
                if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
                    body["max_tokens"] = 8  # short replies keep the run short
            url_path = path.replace("{model}", str((case.path_parameters or {}).get("model", "x")))
            kwargs = {"headers": {**AUTH, "content-type": case.media_type or "application/json"}}
            if method == "POST":
                kwargs["content"] = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = send(server, method, url_path, **kwargs)
            sent.append(r.status_code)
            check(r, f"{method} {url_path} {str(body)[:200]}")

        return fuzz

    both = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for path, method, modes in [("/v1/chat/completions", "POST", both), ("/v1/completions", "POST", both),
                                ("/v1/models", "GET", both[:1]), ("/v1/models/{model}", "GET", both[:1])]:
        for mode in modes:  # (a GET without parameters has no negative cases)
            fuzzer(path, method, mode)()
    assert len(sent) >= 150 and any(s == 200 for s in sent) and any(s == 400 for s in sent)
    assert idle(server)["running"] == 0


HAND_MADE = [
    ("not json", b"{nope", 400), ("empty body", b"", 400), ("array body", b"[]", 400), ("null", b"null", 400),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, (400, 413)), ("oversized", b" " * 70_000, 413),
    ("no messages", {"model": "tiny"}, 400), ("empty messages", {"model": "tiny", "messages": []}, 400),
    ("bad role", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400),
    ("image part", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    ("content dict", {"model": "tiny", "messages": [{"role": "user", "content": {"a": 1}}]}, 400),
    ("max_tokens 0", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400),
    ("max_tokens huge", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**30}, 400),
    ("temperature str", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400),
    ("temperature nan", b'{"model":"tiny","messages":[{"role":"user","content":"x"}],"temperature":NaN}', 400),
    ("n 100", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 100}, 400),
    ("many stops", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 100}, 400),
    ("empty stop", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400),
    ("negative seed", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "seed": -1}, 400),
    ("top_p 0", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400),
    ("logprobs", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400),
    ("json mode", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_object"}}, 400),
    ("logit_bias", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 10}}, 400),
    ("tools", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400),
    ("bad effort", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"}, 400),
    ("bad enable_thinking", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                             "chat_template_kwargs": {"enable_thinking": "yes"}}, 400),
    ("long prompt", {"model": "tiny", "messages": [{"role": "user", "content": "7 " * 2000}]}, 400),
    ("control chars", {"model": "tiny", "messages": [{"role": "user", "content": "\x00\x01\ud7ff" * 10}],
                       "max_tokens": 4}, 200),
    ("special tokens typed", {"model": "tiny", "messages": [{"role": "user", "content": "<think></think><|im_end|>"}],
                              "max_tokens": 4}, 200),
]
COMPLETION_CASES = [
    ("ids out of range", {"model": "tiny", "prompt": [1, 2, 10**9]}, 400), ("empty prompt", {"model": "tiny", "prompt": ""}, 400),
    ("empty list", {"model": "tiny", "prompt": []}, 400), ("empty inner", {"model": "tiny", "prompt": [[]]}, 400),
    ("too many prompts", {"model": "tiny", "prompt": ["a"] * 40}, 400), ("suffix", {"model": "tiny", "prompt": "a", "suffix": "b"}, 400),
    ("negative id", {"model": "tiny", "prompt": [-1]}, 400), ("ok ids", {"model": "tiny", "prompt": [5, 6], "max_tokens": 3}, 200),
]


def test_hand_made_bad_requests(server):
    headers = {**AUTH, "content-type": "application/json"}
    for path, cases in (("/v1/chat/completions", HAND_MADE), ("/v1/completions", COMPLETION_CASES)):
        for name, body, want in cases:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = send(server, "POST", path, content=content, headers=headers)
            check(r, name)
            assert r.status_code in (want if isinstance(want, tuple) else (want,)), f"{name}: {r.status_code} {r.text[:200]}"
    # transport-level oddities
    assert send(server, "GET", "/v1/chat/completions", headers=AUTH).status_code == 405
    check(send(server, "GET", "/v1/chat/completions", headers=AUTH), "wrong method")
    check(send(server, "POST", "/v1/chat/completions", content=b"x=1", headers={**AUTH, "content-type": "text/plain"}),
          "form body")
    r = send(server, "POST", "/v1/chat/completions", content=iter([b" " * 40_000] * 3), headers=headers)  # chunked
    assert r.status_code == 413
    for bad in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        assert send(server, "GET", "/v1/models", headers=bad).status_code == 401
    assert idle(server)["running"] == 0


def test_disconnects_mid_stream_free_their_slots(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True,
            "mode": "slow"}
    before = httpx.get(server + "/health").json()["cancelled"]
    for _ in range(3):
        clients = []
        for _ in range(6):  # more than the 4 slots: some are still waiting when they go away
            c = httpx.Client(timeout=60)
            r = c.send(c.build_request("POST", server + "/v1/chat/completions", json=body, headers=AUTH), stream=True)
            clients.append((c, r))
        for c, r in clients:
            next(r.iter_lines())  # the first event, then hang up
            r.close()
            c.close()
    h = idle(server)
    assert h["running"] == 0 and h["waiting"] == 0
    assert h["cancelled"] > before  # hung-up streams were dropped, not decoded to the end
    r = send(server, "POST", "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 8}, headers=AUTH)
    assert r.status_code == 200  # the server still serves


def test_bursts_over_the_limit_get_429_and_leave_nothing_behind(server):
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 24,
                "stream": i % 2 == 0, "mode": "slow"}
        r = send(server, "POST", "/v1/chat/completions", json=body, headers=AUTH)
        check(r, f"burst {i}")
        if r.status_code == 429:
            assert "retry later" in r.json()["error"]["message"] and r.headers.get("retry-after")
        with lock:
            statuses.append(r.status_code)

    for _ in range(2):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert httpx.get(server + "/health").status_code == 200
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8 and 429 in statuses
    h = idle(server)
    assert h["running"] == 0 and h["waiting"] == 0
