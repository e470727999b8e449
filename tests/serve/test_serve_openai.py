"""End to end: the official `openai` client against `duomind serve` running in its own process."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_helpers import running_server

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, "--api_key", KEY, "--max_batch", "4", "--max_waiting", "8",
                        "--max_body_bytes", "20000") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, content="What is 2 + 3?", **kw):
    extra = kw.pop("extra_body", None)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 24), extra_body=extra, **kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(server + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["max_batch"] == 4


def test_chat_slow_fast_and_reasoning_fields(client):
    slow = chat(client, extra_body={"mode": "slow", "thinking_budget": 5})
    msg = slow.choices[0].message.model_dump()
    assert msg["reasoning_content"] and msg["reasoning_content"] == msg["reasoning"]
    assert "<think>" not in (msg["content"] or "") and "</think>" not in (msg["content"] or "")
    assert slow.choices[0].model_extra["mode"] == "slow"
    assert slow.choices[0].model_extra["thinking"]["budget_hit"] is True
    assert slow.usage.completion_tokens_details.reasoning_tokens == 7  # <think> + 5 + </think>
    assert slow.usage.total_tokens == slow.usage.prompt_tokens + slow.usage.completion_tokens
    fast = chat(client, extra_body={"mode": "fast"})
    fmsg = fast.choices[0].message.model_dump()
    assert fmsg["reasoning_content"] is None and fast.usage.completion_tokens_details.reasoning_tokens == 0
    assert "think>" not in fmsg["content"]
    assert fast.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("kwargs, mode", [
    ({"reasoning_effort": "none"}, "fast"),
    ({"reasoning_effort": "low"}, "slow"),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, "fast"),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}, "slow"),
    ({"content": "/no_think What is 2 + 3?"}, "fast"),
    ({"content": "What is 2 + 3? /no_think then /think"}, "slow"),
    ({"content": "/auto_think What is 2 + 3?"}, "auto"),
    ({}, "slow"),  # the server's default
])
def test_mode_switches(client, kwargs, mode):
    resp = chat(client, **kwargs)
    assert resp.model_extra["mode"]["requested"] == mode
    if mode == "fast":
        assert resp.choices[0].message.model_dump()["reasoning_content"] is None
    if mode == "slow":
        assert resp.choices[0].model_extra["mode"] == "slow"
    if kwargs.get("reasoning_effort") == "low":
        assert resp.model_extra["mode"]["thinking_budget"] == 256


def test_latest_switch_wins_across_messages(client):
    messages = [{"role": "user", "content": "hi /no_think"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and now /think"}]
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    assert resp.model_extra["mode"] == {"requested": "slow", "source": "message", "thinking_budget": None}


def test_streaming_chat_chunk_order_equals_non_streaming(client):
    body = dict(extra_body={"mode": "slow", "thinking_budget": 6}, max_tokens=20)
    whole = chat(client, **body)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **body))
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk, last = chunks[-1], chunks[-2]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    content = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks[:-1])
    assert content == whole.choices[0].message.content
    assert reasoning == whole.choices[0].message.model_dump()["reasoning_content"]


def test_raw_sse_ends_with_done(server):
    with httpx.stream("POST", server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                            "stream": True, "mode": "fast"}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert "usage" not in json.loads(lines[1][6:])  # no usage unless asked for


def test_completions_plain_and_streaming(client):
    whole = client.completions.create(model="tiny", prompt="Q: What is 2 + 3?\nA:", max_tokens=10)
    assert whole.object == "text_completion" and whole.usage.completion_tokens >= 1
    pieces = list(client.completions.create(model="tiny", prompt="Q: What is 2 + 3?\nA:", max_tokens=10,
                                            stream=True))
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    echoed = client.completions.create(model="tiny", prompt="Q: 1", max_tokens=3, echo=True)
    assert echoed.choices[0].text.startswith("Q: 1")
    two = client.completions.create(model="tiny", prompt=["Q: 1", "Q: What is 2 + 3?\nA:"], max_tokens=10)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[1].text == whole.choices[0].text


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.body["code"] == "invalid_api_key"
    r = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]


def test_errors_are_openai_shaped(server, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found" and "'tiny'" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, max_tokens=10_000)
    assert err.value.body["code"] in ("context_length_exceeded", "max_tokens_exceeded")
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, reasoning_effort="none", extra_body={"mode": "slow"})
    assert "send only one" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "x" * 30_000}]}, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(server + "/v1/nowhere", headers=headers)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server + "/health").json()["running"] == 0


def test_stop_strings_cut_the_answer_in_both_modes_of_delivery(client):
    prompt = "Q: What is 2 + 3?\nA:"
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=16).choices[0].text
    stop = whole[4:6]
    assert stop.strip(), whole  # a random model still writes something there
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, stop=[stop]).choices[0]
    assert cut.text == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    streamed = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=16, stop=[stop], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_n_choices_are_indexed_and_seeded(client):
    body = dict(max_tokens=6, n=2, temperature=1.0, seed=5, extra_body={"mode": "fast"})
    a, b = chat(client, **body), chat(client, **body)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # same seed, same text
