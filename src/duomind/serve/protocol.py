"""Request bodies of the OpenAI-compatible API (the fields OpenAI and vLLM clients send) and error bodies.

Field names follow OpenAI's chat and completions APIs; `top_k`, `chat_template_kwargs`, `mode` and
`thinking_budget` are extras (sent by the openai client through `extra_body`). Unknown fields are ignored,
as OpenAI-compatible servers do; fields we cannot honour (logprobs, tools, penalties) are refused with a
message rather than silently dropped.
"""

# no `from __future__ import annotations`: pydantic and FastAPI resolve these annotations at runtime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FloatField = dict(allow_inf_nan=False)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, **FloatField)
    top_p: float | None = Field(None, gt=0.0, le=1.0, **FloatField)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: -1 or 0 disables")
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: float | None = Field(None, **FloatField)
    frequency_penalty: float | None = Field(None, **FloatField)
    ignore_eos: bool = Field(False, description="vLLM extension: generate max_tokens tokens regardless of EOS")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes at most 16 non-empty strings of at most 256 characters")
        return stops

    def unsupported(self) -> str | None:
        """Why this request asks for something the server does not do (None if it does not)."""
        if self.logprobs not in (None, False, 0) or self.top_logprobs not in (None, 0):
            return "logprobs are not supported by this server; leave logprobs and top_logprobs unset."
        if self.logit_bias:
            return "logit_bias is not supported by this server; leave it unset."
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format other than text (JSON mode, schemas) is not supported; leave it unset."
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported; leave them at 0."
        return None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mode: Literal["fast", "slow", "auto"] | None = Field(None, description="DuoMind: reasoning mode")
    thinking_budget: int | None = Field(None, ge=1, description="DuoMind: most tokens in the thinking span")
    tools: list[Any] | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools (function calling) are not supported by this model; leave tools unset."
        return super().unsupported()


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        if self.suffix:
            return "suffix (insertion) is not supported; leave suffix unset."
        if self.best_of not in (None, 1):
            return "best_of is not supported; use n."
        return super().unsupported()


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable_error"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's nested error object."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
