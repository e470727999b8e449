"""LLM judge: score parsing, the judge with a stub backend, and the OpenAI-compatible HTTP backend
against a tiny FastAPI server on 127.0.0.1 (started inside the test; nothing else is contacted)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from fastapi import Request  # module level: the endpoint's annotation is resolved here

from duomind.rewards.config import JudgeConfig
from duomind.rewards.judge import build_prompt, http_backend, judge, local_backend, make_backend, parse_score


@pytest.mark.parametrize("reply, value", [
    ("Good answer.\nScore: 8", 0.8),
    ("**Score:** 7/10", 0.7),
    ("Rating: [[9]]", 0.9),
    ('{"reason": "fine", "score": 6}', 0.6),
    ("I'd give it 3 out of 10.", 0.3),
    ("Score: 4 out of 5", 0.8),
    ("10", 1.0),
    ("<think>\nmaybe Score: 2\n</think>\n\nScore: 9", 0.9),  # a reasoning judge: the final verdict counts
    ("First thought Score: 3. On reflection, Score: 5", 0.5),  # the last score counts
    ("Score: 11", None),  # out of range: a misread, not a 10
    ("no score at all", None),
    ("", None),
])
def test_parse_score(reply, value):
    got = parse_score(reply)
    assert got == (pytest.approx(value) if value is not None else None)


def test_build_prompt_shows_the_answer_not_the_thinking():
    p = build_prompt("What is 2+2?", "<think>\nsecret musing\n</think>\n\n4", reference="4")
    assert "QUESTION:\nWhat is 2+2?" in p and "REFERENCE:\n4" in p and "RESPONSE:\n4" in p
    assert "secret musing" not in p
    assert "Score: N" in p


def test_judge_with_a_stub_backend():
    seen = []

    def complete(prompts):
        seen.extend(prompts)
        return ["Score: 10" if "Paris" in p.split("RESPONSE:")[1] else "Score: 0" if "Lyon" in p else "hmm"
                for p in prompts]

    res = judge(["Capital of France?"] * 3, ["Paris", "Lyon", "?"], [None, None, None], complete)
    assert [r.value for r in res] == [1.0, 0.0, None]
    assert [r.verdict for r in res] == ["ok", "ok", "judge_error"]
    assert len(seen) == 3


def test_judge_survives_a_backend_outage_but_not_a_broken_backend():
    def down(prompts):
        raise ConnectionError("no route")

    res = judge(["q"], ["a"], [None], down)
    assert res[0].verdict == "judge_error" and res[0].value is None
    with pytest.raises(ValueError, match="2 replies for 1 prompts"):
        judge(["q"], ["a"], [None], lambda p: ["Score: 1", "Score: 2"])


def test_make_backend_validates():
    assert make_backend(JudgeConfig(backend="none")) is None
    with pytest.raises(ValueError, match="unknown judge backend"):
        make_backend(JudgeConfig(backend="grpc"))
    with pytest.raises(ValueError, match="needs judge.checkpoint"):
        make_backend(JudgeConfig(backend="local"))


# ------------------------------------------------------------------ the HTTP backend against a local server

class FakeJudgeServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that can fail, stall and count concurrency."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0, status: int = 500):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.fail_first, self.delay_s, self.status = fail_first, delay_s, status
        self.attempts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        self.auth: list[str | None] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            prompt = body["messages"][0]["content"]
            self.auth.append(request.headers.get("authorization"))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                n = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
                if n <= self.fail_first:
                    return JSONResponse({"error": "busy"}, status_code=self.status)
                score = prompt.split("RESPONSE:\n")[1].strip()
                return {"choices": [{"message": {"role": "assistant", "content": f"Fine.\nScore: {score}"}}]}
            finally:
                self.in_flight -= 1

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def _prompts(n: int) -> list[str]:
    return [build_prompt(f"q{i}", str(i % 11)) for i in range(n)]


@pytest.mark.timeout(60)
def test_http_backend_retries_and_limits_concurrency():
    with FakeJudgeServer(fail_first=1, delay_s=0.05) as srv:
        complete = http_backend(srv.url, "judge", api_key="k-123", timeout_s=5, retries=2, concurrency=2)
        res = judge([f"q{i}" for i in range(6)], [str(i) for i in range(6)], [None] * 6, complete)
        assert [r.value for r in res] == pytest.approx([i / 10 for i in range(6)])
        assert all(n == 2 for n in srv.attempts.values())  # each failed once (500), then succeeded
        assert srv.max_in_flight <= 2
        assert set(srv.auth) == {"Bearer k-123"}


@pytest.mark.timeout(60)
def test_http_backend_gives_up_cleanly():
    with FakeJudgeServer(fail_first=10) as srv:  # always 500
        complete = http_backend(srv.url, "judge", timeout_s=5, retries=1, concurrency=2)
        assert complete(_prompts(2)) == [None, None]
        assert all(n == 2 for n in srv.attempts.values())
    with FakeJudgeServer(fail_first=10, status=400) as srv:  # a client error is not retried
        complete = http_backend(srv.url, "judge", timeout_s=5, retries=3)
        assert complete(_prompts(1)) == [None]
        assert list(srv.attempts.values()) == [1]


@pytest.mark.timeout(60)
def test_http_backend_times_out():
    with FakeJudgeServer(delay_s=3.0) as srv:
        complete = http_backend(srv.url, "judge", timeout_s=0.3, retries=0)
        t0 = time.monotonic()
        res = judge(["q"], ["5"], [None], complete)
        assert res[0].verdict == "judge_error"
        assert time.monotonic() - t0 < 2.5


# ------------------------------------------------------------------ the local backend (DuoMind decode loop)

@pytest.fixture(scope="module")
def judge_checkpoint(tmp_path_factory, tiny_tokenizer_dir):
    import shutil

    import torch

    from duomind.config import ModelConfig
    from duomind.model import DuoMind
    from duomind.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("judge")
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    torch.manual_seed(0)
    vocab = len(load_tokenizer(path))
    DuoMind(ModelConfig(vocab_size=vocab, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                        num_attention_heads=4, num_key_value_heads=2)).eval().save_pretrained(path)
    return path


def test_local_backend_decodes_each_prompt_greedily(judge_checkpoint):
    from duomind.generate import generate
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import load_model

    prompts = _prompts(3)
    batched = make_backend(JudgeConfig(backend="local", checkpoint=str(judge_checkpoint), max_tokens=6))(prompts)
    one_by_one = local_backend(str(judge_checkpoint), max_new_tokens=6, batch_size=1)(prompts)
    assert len(batched) == 3 and all(isinstance(r, str) for r in batched)
    assert batched == one_by_one  # greedy: batching and padding change nothing
    # the reply is exactly the decode loop's continuation of the prompt as a user turn
    tok, model = load_tokenizer(judge_checkpoint), load_model(judge_checkpoint)
    ids = generate(model, [chat_prompt(tok, [{"role": "user", "content": prompts[0]}])], max_new_tokens=6)
    assert batched[0] == tok.decode(ids[0], skip_special_tokens=True)


def test_scorer_judges_general_records_with_the_local_backend(judge_checkpoint):
    from duomind.rewards.batch import Scorer
    from duomind.rewards.config import RewardConfig

    cfg = RewardConfig(judge=JudgeConfig(backend="local", checkpoint=str(judge_checkpoint), max_tokens=4))
    with Scorer(cfg, workers=0) as scorer:
        out = scorer.score([{"id": 1, "task": "general", "prompt": "q", "response": "<think>\nx\n</think>\n\na"}])
        reply = scorer.complete([build_prompt("q", "a")])[0]  # what the judge was asked: the answer, not the thinking
    assert out[0]["detail"]["judge"]["raw"] == reply
    assert out[0]["verdict"] == ("ok" if parse_score(reply) is not None else "judge_error")
