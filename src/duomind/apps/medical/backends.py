"""Evaluation backends: the local VLM, Hugging Face image-text-to-text models, OpenAI-compatible endpoints.

A backend is a callable `answer(items) -> list[Reply]`, one reply per item in order. A reply carries the
text, or None and the reason (unreadable image, placeholder mismatch, timeout, HTTP error, ...), so one bad
item is a recorded failure and never stops, or silently skews, the others.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from duomind.apps.medical.data import PLACEHOLDER, Item, load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    text: str | None
    error: str | None = None


Backend = Callable[[list[Item]], list[Reply]]


def split_prompt(item: Item) -> list[str | int]:
    """The prompt as text pieces and image indices, in order ("<image>a<image>b" -> [0, "a", 1, "b"])."""
    n = item.prompt.count(PLACEHOLDER)
    if n != len(item.images):
        raise ValueError(f"{n} {PLACEHOLDER} placeholder(s) for {len(item.images)} image(s); put exactly one "
                         f"{PLACEHOLDER} where each image goes.")
    parts: list[str | int] = []
    for i, piece in enumerate(item.prompt.split(PLACEHOLDER)):
        if i:
            parts.append(i - 1)
        if piece:
            parts.append(piece)
    return parts


def local_backend(checkpoint: str, max_new_tokens: int = 48, batch_size: int = 16) -> Backend:
    """The DuoMind VLM of `checkpoint`, greedy decoding with its KV cache."""
    import torch

    from duomind.apps.medical.model import Encoded, encode, generate, load_vlm, pixels_of
    from duomind.generate.cli import stop_ids

    model, tok = load_vlm(checkpoint)
    stops = stop_ids(tok)
    limit = model.decoder.config.max_position_embeddings

    def answer(items: list[Item]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(items)
        ready: list[tuple[int, Encoded]] = []
        for i, it in enumerate(items):
            try:
                ids, labels = encode(tok, model.config, it, with_answer=False)
                if len(ids) + max_new_tokens > limit:
                    raise ValueError(f"prompt of {len(ids)} tokens (image tokens included) + {max_new_tokens} new "
                                     f"tokens exceeds the model's {limit} positions")
                ready.append((i, Encoded(ids, labels, pixels_of(it, model.config.image_size))))
            except (ValueError, FileNotFoundError) as err:
                replies[i] = Reply(None, str(err))
        with torch.inference_mode():
            for s in range(0, len(ready), batch_size):
                chunk = ready[s:s + batch_size]
                new = generate(model, [e for _, e in chunk], max_new_tokens, stops, tok.pad_token_id)
                for (i, _), toks in zip(chunk, new):
                    replies[i] = Reply(tok.decode(toks, skip_special_tokens=True).strip())
        return replies  # type: ignore[return-value]

    return answer


def hf_backend(model_dir: str, max_new_tokens: int = 48) -> Backend:
    """A local Hugging Face image-text-to-text model (LLaVA-style: AutoProcessor + AutoModelForImageTextToText).

    The prompt becomes one user turn of structured content (images where the placeholders were); without a
    chat template, the processor's image token replaces each placeholder. Greedy decoding.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model {model_dir!r} is not a directory; pass a local Hugging Face model "
                                "directory (with config.json and the processor files). Nothing is downloaded.")
    proc = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval()
    image_token = getattr(proc, "image_token", PLACEHOLDER)

    def one(it: Item) -> Reply:
        try:
            parts = split_prompt(it)
            images = [load_image(r, "RGB") for r in it.images]
        except (ValueError, FileNotFoundError) as err:
            return Reply(None, str(err))
        if getattr(proc, "chat_template", None):
            content = [{"type": "image"} if isinstance(p, int) else {"type": "text", "text": p} for p in parts]
            text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        else:
            text = it.prompt.replace(PLACEHOLDER, image_token)
        inputs = proc(text=text, images=images or None, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return Reply(proc.decode(new, skip_special_tokens=True).strip())

    def answer(items: list[Item]) -> list[Reply]:
        return [one(it) for it in items]

    return answer


def data_url(ref: str | bytes) -> str:
    """An image as a `data:image/png;base64,...` URL (re-encoded as PNG, so any readable format works)."""
    buf = io.BytesIO()
    load_image(ref, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def openai_messages(item: Item) -> list[dict]:
    """One user turn with text and `image_url` parts interleaved where the placeholders were."""
    content = []
    for p in split_prompt(item):
        if isinstance(p, int):
            content.append({"type": "image_url", "image_url": {"url": data_url(item.images[p])}})
        else:
            content.append({"type": "text", "text": p})
    return [{"role": "user", "content": content}]


def openai_backend(url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 2,
                   concurrency: int = 4, max_tokens: int = 256) -> Backend:
    """Any OpenAI-compatible `/chat/completions` endpoint that takes images as data URLs (greedy).

    Connection errors, timeouts, 429 and 5xx are retried with backoff; an item that still fails, or whose
    reply is malformed, gets a Reply with the error instead of text.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def one(it: Item) -> Reply:
        try:
            body = {"model": model, "messages": openai_messages(it), "temperature": 0.0, "max_tokens": max_tokens}
        except (ValueError, FileNotFoundError) as err:
            return Reply(None, str(err))
        error = "no attempt"
        for attempt in range(retries + 1):
            try:
                resp = client.post("/chat/completions", json=body)
                if resp.status_code == 429 or resp.status_code >= 500:
                    error = f"HTTP {resp.status_code}"
                elif resp.status_code >= 400:
                    return Reply(None, f"HTTP {resp.status_code}: {resp.text[:200]}")
                else:
                    text = resp.json()["choices"][0]["message"]["content"]
                    if not isinstance(text, str):
                        return Reply(None, f"malformed reply: content is {type(text).__name__}")
                    return Reply(text.strip())
            except httpx.TimeoutException:
                error = f"timed out after {timeout_s:g} s"
            except httpx.TransportError as err:
                error = f"connection error: {err}"
            except (KeyError, IndexError, TypeError, ValueError) as err:
                return Reply(None, f"malformed reply ({type(err).__name__}: {err})")
            if attempt < retries:
                time.sleep(min(4.0, 0.2 * 2**attempt))
        log.warning("item %s failed after %d attempts: %s", it.id, retries + 1, error)
        return Reply(None, error)

    def answer(items: list[Item]) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="med-api") as pool:
            return list(pool.map(one, items))

    return answer


def make_backend(model: str, api_model: str = "default", api_key_env: str = "OPENAI_API_KEY",
                 max_new_tokens: int = 48, timeout_s: float = 60.0, retries: int = 2, concurrency: int = 4) -> Backend:
    """`model` is an http(s) URL (OpenAI-compatible), a DuoMind VLM checkpoint/run, or a local HF model dir."""
    if model.startswith(("http://", "https://")):
        return openai_backend(model, api_model, os.environ.get(api_key_env), timeout_s, retries, concurrency,
                              max_new_tokens)
    import json
    from pathlib import Path

    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {model!r} is neither an http(s) URL nor a directory; pass a VLM run from "
                                "`duomind med train`, a local Hugging Face model directory, or http://host:port/v1.")
    cfg = path / "config.json"
    if (path / "latest").is_file() or (cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "duomind-vlm"):
        return local_backend(model, max_new_tokens)
    return hf_backend(model, max_new_tokens)
