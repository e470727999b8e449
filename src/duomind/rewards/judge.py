"""LLM judge for general tasks: a rubric prompt, robust score parsing, pluggable backends.

A MARS source (arXiv 2505.22375: lightweight LLM evaluators for tasks without a verifier). A
backend is any callable `complete(prompts: list[str]) -> list[str]`, so the judge is tested with a
stub and runs against either an OpenAI-compatible HTTP endpoint (`http_backend`) or a local DuoMind
checkpoint through DuoMind's decode loop (`local_backend`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from duomind.rewards.config import JudgeConfig
from duomind.rewards.format import split_think

log = logging.getLogger(__name__)
Complete = Callable[[list[str]], list[str]]

RUBRIC = """You are a strict, fair grader. Rate the RESPONSE to the QUESTION on a 0-10 scale:
- correctness and factual accuracy (most important; compare with the REFERENCE when one is given),
- helpfulness: it answers what was asked, completely,
- clarity and concision: no padding, no repetition.
10 = correct, complete and clear; 5 = partly correct or incomplete; 0 = wrong, harmful or off-topic.
Judge only the final answer, not any reasoning shown before it. Write one or two sentences of
justification, then end with the line "Score: N" where N is an integer from 0 to 10."""


@dataclass(frozen=True)
class JudgeResult:
    """A judged response: value in [0, 1], or None with verdict `judge_error`."""

    value: float | None
    verdict: str
    raw: str


def build_prompt(prompt: str, response: str, reference: str | None = None, rubric: str | None = None) -> str:
    """The judge's prompt: rubric, question, optional reference, and the response's final answer."""
    answer = split_think(response)[1].strip() or "(no answer)"
    parts = [rubric or RUBRIC, f"QUESTION:\n{prompt.strip()}"]
    if reference:
        parts.append(f"REFERENCE:\n{reference.strip()}")
    parts.append(f"RESPONSE:\n{answer}")
    return "\n\n".join(parts)


_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_JSON = re.compile(r"\"(?:score|rating)\"\s*:\s*\"?(\d+(?:\.\d+)?)")
_LABELLED = re.compile(
    r"(?:score|rating|grade)\s*(?:\*\*)?\s*(?:[:=]|is)\s*(?:\*\*)?\s*(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?",
    re.IGNORECASE)
_OUT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*(10|100|5)\b", re.IGNORECASE)


def parse_score(text: str, scale: float = 10.0) -> float | None:
    """The judge's score as a value in [0, 1], or None when no valid score can be found.

    Tries, taking the LAST match of the first pattern that matches: `[[N]]`, `"score": N`,
    `Score: N` (optionally `/ M` or `out of M`), `N/10`, and finally a reply that is only a number.
    A score above its scale is rejected rather than clipped: it signals a misread.
    """
    answer = split_think(text)[1] or text  # a reasoning judge may think first
    for pattern in (_BRACKETS, _JSON, _LABELLED, _OUT_OF):
        found = list(pattern.finditer(answer))
        if found:
            m = found[-1]
            value = float(m.group(1))
            top = float(m.group(2)) if m.lastindex and m.lastindex >= 2 and m.group(2) else scale
            return value / top if 0 <= value <= top and top > 0 else None
    bare = answer.strip().rstrip(".")
    if re.fullmatch(r"\d+(?:\.\d+)?", bare) and float(bare) <= scale:
        return float(bare) / scale
    return None


def judge(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str | None],
          complete: Complete, rubric: str | None = None) -> list[JudgeResult]:
    """Judge a batch of responses with one call to the backend."""
    texts = [build_prompt(p, r, ref, rubric) for p, r, ref in zip(prompts, responses, references)]
    try:
        replies = complete(texts)
    except Exception as e:  # noqa: BLE001 - a judge outage must not stop the other sources
        log.warning("judge backend failed: %s", e)
        return [JudgeResult(None, "judge_error", f"backend error: {e}") for _ in texts]
    if len(replies) != len(texts):
        raise ValueError(f"judge backend returned {len(replies)} replies for {len(texts)} prompts")
    results = []
    for reply in replies:
        value = parse_score(reply) if reply is not None else None
        results.append(JudgeResult(value, "ok" if value is not None else "judge_error", reply or ""))
    return results


def http_backend(url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 3,
                 concurrency: int = 8, max_tokens: int = 512) -> Complete:
    """A backend for any OpenAI-compatible `/chat/completions` endpoint (greedy decoding).

    Failed requests are retried with exponential backoff on connection errors, timeouts, 429 and 5xx;
    a request that still fails yields None (verdict `judge_error`) instead of failing the batch.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="judge")

    def one(prompt: str) -> str | None:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0,
                "max_tokens": max_tokens}
        for attempt in range(retries + 1):
            try:
                resp = client.post("/chat/completions", json=body)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
                resp.raise_for_status()
                return resp.json()["choices"][0]["message"]["content"]
            except (httpx.TransportError, httpx.HTTPStatusError) as e:
                retryable = not isinstance(e, httpx.HTTPStatusError) or e.response.status_code in (429,) or \
                    e.response.status_code >= 500
                if not retryable or attempt == retries:
                    log.warning("judge request failed after %d attempts: %s", attempt + 1, e)
                    return None
                time.sleep(min(8.0, 0.25 * 2 ** attempt))
            except (KeyError, IndexError, ValueError) as e:
                log.warning("judge endpoint sent an unexpected reply: %s", e)
                return None
        return None

    def complete(prompts: list[str]) -> list[str]:
        return list(pool.map(one, prompts))

    return complete


def local_backend(checkpoint: str, max_new_tokens: int = 512, batch_size: int = 8) -> Complete:
    """A backend that runs a DuoMind checkpoint with DuoMind's KV-cache decode loop (greedy).

    Each prompt is one user turn of the checkpoint's chat template; decoding stops at the end of the
    turn; the reply is the text of the new tokens, special tokens dropped.
    """
    import torch

    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import load_model

    tok = load_tokenizer(checkpoint)
    model = load_model(checkpoint)
    lock = threading.Lock()  # one model, one decode at a time
    stop = stop_ids(tok)

    def complete(prompts: list[str]) -> list[str]:
        out: list[str] = []
        with lock, torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                ids = [chat_prompt(tok, [{"role": "user", "content": p}]) for p in prompts[i: i + batch_size]]
                new = generate(model, ids, max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=stop)
                out += [tok.decode(t, skip_special_tokens=True) for t in new]
        return out

    return complete


def make_backend(cfg: JudgeConfig) -> Complete | None:
    """The backend a `JudgeConfig` asks for, or None for `backend: none`."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "http":
        return http_backend(cfg.url, cfg.model, os.environ.get(cfg.api_key_env), cfg.timeout_s, cfg.retries,
                            cfg.concurrency, cfg.max_tokens)
    if cfg.backend == "local":
        if not cfg.checkpoint:
            raise ValueError("judge backend 'local' needs judge.checkpoint (a DuoMind checkpoint directory)")
        return local_backend(cfg.checkpoint, cfg.max_tokens)
    raise ValueError(f"unknown judge backend {cfg.backend!r}; use none, http or local")
