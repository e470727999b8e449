"""`duomind reward serve`: the scorer over HTTP, with request size limits."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from duomind.rewards.batch import Scorer
from duomind.rewards.config import RewardConfig
from duomind.rewards.service import create_app

RECORD = {"id": 1, "task": "math", "prompt": "1+1?", "response": "\\boxed{2}", "answer": "2"}


@pytest.fixture
def client():
    scorer = Scorer(RewardConfig(normalize=False), workers=0, complete=lambda ps: ["Score: 7"] * len(ps))
    with TestClient(create_app(scorer, max_body_bytes=4096, max_records=3)) as c:
        yield c
    scorer.close()


def test_score_health_and_stats(client):
    resp = client.post("/score", json={"records": [RECORD, {**RECORD, "id": 2, "response": "\\boxed{3}"},
                                                   {"id": 3, "task": "general", "prompt": "hi", "response": "hello"}]})
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["verdict"] for r in results] == ["ok", "wrong_answer", "ok"]
    assert results[2]["components"]["judge"] == pytest.approx(0.7)
    assert client.get("/health").json()["status"] == "ok"
    assert "math/math" in client.get("/stats").json()


def test_too_many_records(client):
    resp = client.post("/score", json={"records": [RECORD] * 4})
    assert resp.status_code == 413 and "limit is 3" in resp.json()["detail"]


def test_body_over_the_limit_by_header(client):
    resp = client.post("/score", json={"records": [{**RECORD, "response": "x" * 5000}]})
    assert resp.status_code == 413


def test_chunked_body_over_the_limit(client):
    body = json.dumps({"records": [{**RECORD, "response": "x" * 5000}]}).encode()

    def chunks():  # no Content-Length: the limit must hold while reading
        for i in range(0, len(body), 1000):
            yield body[i: i + 1000]

    resp = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_bad_request_shape(client):
    assert client.post("/score", json={"items": []}).status_code == 422
