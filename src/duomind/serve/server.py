"""OpenAI-compatible HTTP server over the continuous-batching engine (FastAPI).

Routes: POST /v1/chat/completions, POST /v1/completions (both stream as server-sent events), GET /v1/models,
GET /health. Every route but /health wants `Authorization: Bearer <api_key>` when a key is set. Errors use
OpenAI's nested body `{"error": {"message", "type", "param", "code"}}`. Limits: request body size,
max_tokens, context length (400 naming the numbers) and requests held at once (429, Retry-After).

Thinking text is sent in both `reasoning_content` (DeepSeek / vLLM) and `reasoning` (newer vLLM,
OpenRouter), so either kind of client finds it; the answer is in `content` with no think tags.
"""

# no `from __future__ import annotations`: FastAPI reads the request models' annotations at runtime
import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from duomind.reasoner.control import RepairConfig, ThinkingControl
from duomind.reasoner.modes import message_text, resolve_mode
from duomind.rewards.service import BodyLimit
from duomind.serve.engine import Delta, Engine, Overloaded, SamplingParams
from duomind.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body
from duomind.tokenizer import THINK, chat_prompt, special_ids


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


class OpenAIBodyLimit(BodyLimit):
    """The reward service's body limit, answering with OpenAI's error body."""

    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes; send a shorter prompt or conversation"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(error_body(413, self._message(), code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class ApiKey:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <key>`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = ("missing API key: send the header `Authorization: Bearer <key>`" if not given else
                   "invalid API key: check the key the server was started with (--api_key)")
        body = json.dumps(error_body(401, message, code="invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def create_app(engine: Engine, model_name: str, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               max_tokens_limit: int | None = None, default_mode: str = "slow", default_temperature: float = 0.0,
               repair: RepairConfig | None = RepairConfig()):
    """The FastAPI app serving `engine` under the model id `model_name`.

    Args:
        engine: A running Engine (owns the model and tokenizer).
        model_name: The id clients pass as `model` (and /v1/models lists).
        api_key: Bearer key required on every route but /health (None: no key).
        max_body_bytes: Larger request bodies get 413.
        max_tokens_limit: Largest max_tokens a request may ask for (default: the context length).
        default_mode: Chat mode when a request names none (fast, slow or auto).
        default_temperature: Temperature when a request names none (0: greedy).
        repair: Repetition self-repair in thinking spans (None: off).
    """
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    tok, created = engine.tok, int(time.time())
    ids = special_ids(tok)
    reasoning_tokens = ids.get(THINK) is not None
    limit = min(max_tokens_limit or engine.context_len, engine.context_len)
    app = FastAPI(title="DuoMind", version="1", description="OpenAI-compatible API of a DuoMind model: fast, "
                  "slow and auto reasoning modes, continuous batching.")
    app.add_middleware(OpenAIBodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)

    def fail(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return fail(err.status, err.message, err.param, err.code, err.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        status = 404 if err.status_code == 404 else err.status_code
        message = (f"no route {request.method} {request.url.path}; see /docs for the API" if status == 404
                   else str(err.detail))
        return fail(status, message, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        errors = err.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        return fail(400, f"{param + ': ' if param else ''}{msg}", param=param)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, err: RecursionError):
        return fail(400, "the request body is nested too deeply to parse; send plain JSON objects")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        return fail(500, f"internal error: {type(err).__name__}: {err}")

    @app.get("/health")
    async def health():
        stats = engine.stats()
        if not stats["alive"]:
            return fail(503, "the engine thread has stopped; restart the server")
        return {"status": "ok", **stats}

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "duomind",
                "max_model_len": engine.context_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def model_info(model: str):
        check_model(model)
        return model_card()

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def params_of(req, max_tokens: int, i: int) -> SamplingParams:
        top_k = req.top_k if req.top_k and req.top_k > 0 else None
        temperature = default_temperature if req.temperature is None else req.temperature
        seed = None if req.seed is None else (req.seed + i) % 2**63
        return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=req.top_p,
                              seed=seed, stop=tuple(req.stop or ()), ignore_eos=req.ignore_eos)

    def budget(n_prompt: int, asked: int | None) -> int:
        if asked is not None and asked > limit:
            raise ApiError(400, f"max_tokens={asked} is over this server's limit of {limit}; ask for fewer.",
                           param="max_tokens", code="max_tokens_exceeded")
        room = engine.context_len - n_prompt
        if asked is None:
            if room < 1:
                raise ApiError(400, f"the prompt has {n_prompt} tokens, which fills this model's context of "
                               f"{engine.context_len}; shorten it.", param="messages", code="context_length_exceeded")
            return min(limit, room)
        if asked > room:
            raise ApiError(400, f"this model's context is {engine.context_len} tokens, but the request needs "
                           f"{n_prompt + asked} ({n_prompt} in the prompt + {asked} max_tokens); shorten the "
                           "prompt or lower max_tokens.", param="max_tokens", code="context_length_exceeded")
        return asked

    def submit_all(jobs: list[tuple[list[int], SamplingParams, ThinkingControl | None]]):
        """Submit every choice or none (429 when the engine is full); deltas arrive as (index, Delta)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []

        def sink_for(i: int):
            def sink(delta: Delta) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (i, delta))
            return sink

        try:
            for i, (prompt, params, control) in enumerate(jobs):
                handles.append(engine.submit(prompt, params, control, sink_for(i)))
        except Overloaded as err:
            for h in handles:
                h.cancel()
            raise ApiError(429, str(err), code="server_busy", headers={"Retry-After": "1"}) from err
        except ValueError as err:
            for h in handles:
                h.cancel()
            raise ApiError(400, str(err)) from err
        return queue, handles

    async def deltas(queue: asyncio.Queue, handles: list, request: Request | None = None) -> AsyncIterator:
        """(index, Delta) until every choice finished; cancels what is left if the consumer goes away."""
        open_ = len(handles)
        try:
            while open_:
                try:
                    i, delta = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
                    continue
                if delta.finish_reason:
                    open_ -= 1
                yield i, delta
        finally:
            for h in handles:
                h.cancel()

    def usage_of(finals: list[Delta]) -> dict:
        prompt = sum(d.prompt_tokens for d in finals[:1]) if finals else 0
        completion = sum(d.completion_tokens for d in finals)
        reasoning = sum(d.reasoning_tokens for d in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": reasoning}}

    def raise_if_error(delta: Delta) -> None:
        if delta.finish_reason == "error":
            raise ApiError(503, f"generation failed: {delta.error}; retry the request", code="engine_error")

    # --- chat ---
    def chat_jobs(req: ChatCompletionRequest):
        why = req.unsupported()
        if why:
            raise ApiError(400, why)
        messages = []
        for i, m in enumerate(req.messages):
            try:
                text = message_text(m.content)
            except ValueError as err:
                raise ApiError(400, str(err), param=f"messages.{i}.content") from err
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        kwargs = req.chat_template_kwargs or {}
        thinking = kwargs.get("enable_thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise ApiError(400, "chat_template_kwargs.enable_thinking must be true or false",
                           param="chat_template_kwargs.enable_thinking")
        try:
            messages, choice = resolve_mode(messages, req.mode, req.reasoning_effort, thinking,
                                            req.thinking_budget, default_mode)
        except ValueError as err:
            raise ApiError(400, str(err)) from err
        mode = choice.mode if reasoning_tokens else None
        prompt = chat_prompt(tok, messages, mode=mode)
        asked = req.max_completion_tokens or req.max_tokens
        max_tokens = budget(len(prompt), asked)
        jobs = []
        for i in range(req.n):
            control = ThinkingControl(mode, ids, choice.budget, repair, engine.think_threshold) if mode else None
            jobs.append((prompt, params_of(req, max_tokens, i), control))
        return jobs, choice

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        jobs, choice = await run_in_threadpool(chat_jobs, req)
        queue, handles = submit_all(jobs)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name}
        if req.stream:
            usage_on = bool(req.stream_options and req.stream_options.include_usage)

            async def events():
                finals: list[Delta] = []
                for i in range(len(jobs)):
                    yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}],
                                **({"usage": None} if usage_on else {})})
                async for i, d in deltas(queue, handles):
                    if d.finish_reason == "error":
                        yield _sse(error_body(503, f"generation failed: {d.error}", code="engine_error"))
                        break
                    delta: dict[str, Any] = {}
                    if d.reasoning:
                        delta["reasoning_content"] = delta["reasoning"] = d.reasoning
                    if d.content:
                        delta["content"] = d.content
                    if delta:
                        yield _sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                         "finish_reason": None}], **({"usage": None} if usage_on else {})})
                    if d.finish_reason:
                        finals.append(d)
                        yield _sse({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                         "finish_reason": d.finish_reason, "mode": d.mode}],
                                    **({"usage": None} if usage_on else {})})
                else:
                    if usage_on:
                        yield _sse({**base, "choices": [], "usage": usage_of(finals)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts = [{"reasoning": [], "content": [], "final": None} for _ in jobs]
        async for i, d in deltas(queue, handles, request):
            raise_if_error(d)
            parts[i]["reasoning"].append(d.reasoning)
            parts[i]["content"].append(d.content)
            if d.finish_reason:
                parts[i]["final"] = d
        if any(p["final"] is None for p in parts):  # the client went away
            return fail(499, "client closed the request")
        choices = []
        for i, p in enumerate(parts):
            reasoning = "".join(p["reasoning"]) if p["final"].mode == "slow" else None
            choices.append({"index": i, "message": {"role": "assistant", "content": "".join(p["content"]),
                                                    "reasoning_content": reasoning, "reasoning": reasoning},
                            "logprobs": None, "finish_reason": p["final"].finish_reason, "mode": p["final"].mode,
                            "thinking": p["final"].info or None})
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name, "choices": choices,
                "usage": usage_of([p["final"] for p in parts]), "system_fingerprint": None,
                "mode": {"requested": choice.mode, "source": choice.source, "thinking_budget": choice.budget}}

    # --- completions ---
    def completion_jobs(req: CompletionRequest):
        why = req.unsupported()
        if why:
            raise ApiError(400, why)
        raw = req.prompt
        if isinstance(raw, str):
            prompts = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            prompts = [raw]
        else:
            prompts = list(raw)
        if not prompts or len(prompts) * req.n > 16:
            raise ApiError(400, "send between 1 and 16 prompts (times n) per request", param="prompt")
        vocab = len(tok)
        encoded = []
        for p in prompts:
            if isinstance(p, str):
                ids_ = tok.encode(p, add_special_tokens=False)
            else:
                if any(t < 0 or t >= vocab for t in p):
                    raise ApiError(400, f"prompt token ids must lie in [0, {vocab}); this model's vocabulary",
                                   param="prompt")
                ids_ = list(p)
            if not ids_:
                raise ApiError(400, "the prompt is empty; send at least one token of text", param="prompt")
            encoded.append(ids_)
        jobs, texts = [], []
        for ids_ in encoded:
            max_tokens = budget(len(ids_), req.max_tokens)
            for _ in range(req.n):
                jobs.append((ids_, params_of(req, max_tokens, len(jobs)), None))
                texts.append(tok.decode(ids_) if req.echo else "")
        return jobs, texts

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        jobs, echoes = await run_in_threadpool(completion_jobs, req)
        queue, handles = submit_all(jobs)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": now, "model": model_name}
        if req.stream:
            usage_on = bool(req.stream_options and req.stream_options.include_usage)

            async def events():
                finals: list[Delta] = []
                echoed = set()
                async for i, d in deltas(queue, handles):
                    if d.finish_reason == "error":
                        yield _sse(error_body(503, f"generation failed: {d.error}", code="engine_error"))
                        break
                    text = d.content
                    if i not in echoed:
                        echoed.add(i)
                        text = echoes[i] + text
                    if d.finish_reason:
                        finals.append(d)
                    if text or d.finish_reason:
                        yield _sse({**base, "choices": [{"index": i, "text": text, "logprobs": None,
                                                         "finish_reason": d.finish_reason}],
                                    **({"usage": None} if usage_on else {})})
                else:
                    if usage_on:
                        yield _sse({**base, "choices": [], "usage": usage_of(finals)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts = [[e] for e in echoes]
        finals: list[Delta | None] = [None] * len(jobs)
        async for i, d in deltas(queue, handles, request):
            raise_if_error(d)
            texts[i].append(d.content)
            if d.finish_reason:
                finals[i] = d
        if any(f is None for f in finals):
            return fail(499, "client closed the request")
        choices = [{"index": i, "text": "".join(t), "logprobs": None, "finish_reason": f.finish_reason}
                   for i, (t, f) in enumerate(zip(texts, finals))]
        usage = usage_of(finals)
        usage["prompt_tokens"] = sum(len(j[0]) for j in jobs)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name, "choices": choices,
                "usage": usage}

    return app
