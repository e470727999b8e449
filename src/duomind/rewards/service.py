"""`duomind reward serve`: the batch scorer as an HTTP service for remote RL workers (FastAPI).

POST /score  {"records": [...]} -> {"results": [...]}  (the `duomind reward score` output records)
GET  /health -> {"status": "ok", "isolation": {...}}
GET  /stats  -> MARS running statistics

Requests over `max_body_bytes` (checked on the header AND while reading, so a chunked body cannot
slip past) or over `max_records` records get 413 before any scoring starts.
"""

# no `from __future__ import annotations`: FastAPI must resolve the locally defined request model
from typing import Any

from duomind.rewards.batch import Scorer


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than `max_bytes` with 413."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes; send fewer records per request"

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps({"detail": self._message()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(scorer: Scorer, max_body_bytes: int = 16 << 20, max_records: int = 4096):
    """A FastAPI app that scores reward records with `scorer`."""
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool
    from pydantic import BaseModel

    from duomind.rewards.sandbox import isolation

    class ScoreRequest(BaseModel):
        records: list[Any]

    app = FastAPI(title="DuoMind rewards", description="MARS reward scoring for RL workers")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.post("/score")
    async def score(req: ScoreRequest) -> dict:
        if len(req.records) > max_records:
            raise HTTPException(413, f"{len(req.records)} records in one request; the limit is {max_records}")
        try:
            results = await run_in_threadpool(scorer.score, req.records)
        except ValueError as e:  # e.g. general records without a configured judge
            raise HTTPException(400, str(e)) from e
        return {"results": results}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "isolation": isolation()}

    @app.get("/stats")
    async def stats() -> dict:
        return scorer.mars.state_dict()

    return app
