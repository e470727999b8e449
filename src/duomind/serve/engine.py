"""Continuous batching: requests join and leave the running batch at every decode step.

One background thread owns the model. Each step it (1) drops finished and cancelled sequences, (2) admits
waiting requests into free slots with one batched prefill, (3) decodes one token for every running
sequence in one forward pass. Nobody waits for the slowest member of a batch.

KV layout: one pre-allocated cache (duomind.model.KVCache, `SlotCache` below) with a slot per running
sequence. All rows end at one shared write position, so the batch is exactly the left-padded batch of
`duomind.generate` and reuses the model's 2-D padding masks: row r holds its tokens in columns
[start_r, pos) and masks everything left of start_r. A leaving row is replaced by the last row (one row
copy); a joining prompt longer than the window shifts the window right; when the window reaches the end of
the buffer, or wastes more columns than it uses, it is slid back to column 0 (one contiguous copy).

    engine = Engine(model, tok, max_batch=16)
    handle = engine.submit(ids, SamplingParams(max_tokens=64), control=None, sink=print)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from duomind.generate.cli import stop_ids
from duomind.generate.decode import left_pad
from duomind.generate.sampling import sample
from duomind.model import DuoMind, KVCache
from duomind.reasoner.control import ThinkingControl
from duomind.serve.text import Segment, cut_at_stop, held_back


class Overloaded(RuntimeError):
    """The engine already holds as many requests as it accepts; retry later."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request.

    Attributes:
        max_tokens: Most new tokens (thinking included).
        temperature: 0 for greedy.
        top_k: Sample from the k most likely tokens only.
        top_p: Nucleus mass.
        seed: Seed of this request's private generator.
        stop: Strings that end the answer (not included in it).
        ignore_eos: Keep going past end-of-turn tokens up to max_tokens (benchmarks).
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Delta:
    """What one step added to a request: text deltas, and at the end the finish reason and counts."""

    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "error" (with `error`)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    mode: str | None = None  # the mode the sequence actually ran in (auto resolves to fast or slow)
    token_ids: list[int] | None = None  # all generated ids (last delta only)
    error: str | None = None
    info: dict = field(default_factory=dict)


class Handle:
    """A submitted request: `cancel()` frees its slot at the next step."""

    def __init__(self, rid: int) -> None:
        self.id = rid
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SlotCache(KVCache):
    """KVCache whose forward passes use only its first `rows` batch rows (the running sequences)."""

    rows = 0
    moves = 0  # window moves so far (a test checks the sliding path runs)

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        end, n = self.length + k.shape[2], k.shape[0]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed but the cache holds {self.max_len}.")
        self.k[layer_idx, :n, :, self.length:end] = k
        self.v[layer_idx, :n, :, self.length:end] = v
        return self.k[layer_idx, :n, :, :end], self.v[layer_idx, :n, :, :end]

    def copy_row(self, src: int, dst: int) -> None:
        self.k[:, dst, :, :self.length] = self.k[:, src, :, :self.length]
        self.v[:, dst, :, :self.length] = self.v[:, src, :, :self.length]

    def move_window(self, width: int, new_end: int) -> None:
        """Move the last `width` columns of the first `rows` rows to end at `new_end`."""
        old = slice(self.length - width, self.length)
        new = slice(new_end - width, new_end)
        if old != new and width:
            self.moves += 1
            for buf in (self.k, self.v):
                buf[:, :self.rows, :, new] = buf[:, :self.rows, :, old].clone()
        self.length = new_end


class Sequence:
    """A running (or waiting) request: prompt, generated tokens, text state, mode control."""

    def __init__(self, handle: Handle, ids: list[int], params: SamplingParams, control: ThinkingControl | None,
                 sink: Callable[[Delta], None], tok, device) -> None:
        self.handle, self.ids, self.params, self.control, self.sink = handle, ids, params, control, sink
        self.out: list[int] = []
        self.start = 0  # first cache column of this row
        self.thought = Segment(tok)
        self.answer = Segment(tok, strip=control is not None)  # raw completions keep their spacing
        self.sent_answer = 0  # characters of the answer passed to the sink (stop strings may hold some back)
        self.reasoning_tokens = 0
        self.finished: str | None = None
        self.generator = (torch.Generator(device=device).manual_seed(params.seed)
                          if params.seed is not None and params.temperature > 0 else None)


class Engine:
    """The continuous-batching engine (see the module docstring).

    Args:
        model: A DuoMind model (eval mode is set here).
        tok: Its tokenizer.
        max_batch: Sequences decoded together (KV slots).
        max_waiting: Requests that may wait for a slot; beyond it `submit` raises Overloaded.
        context_len: Longest prompt + max_tokens (default: the model's max_position_embeddings).
        prefill_chunk: Most prompts prefilled in one forward pass.
        drafter: A `duomind.generate` drafter (FIRP predictors, Medusa heads, prompt lookup): speculative
            steps while one greedy sequence runs alone (`duomind.serve.speculate`).
        think_threshold: The model's calibrated auto-mode threshold (`duomind.reasoner.router`), for the
            `ThinkingControl`s that callers submit (None: auto decides by its argmax).
    """

    def __init__(self, model: DuoMind, tok, max_batch: int = 16, max_waiting: int = 64,
                 context_len: int | None = None, prefill_chunk: int = 8, drafter=None,
                 think_threshold: float | None = None) -> None:
        if max_batch < 1 or max_waiting < 0:
            raise ValueError(f"max_batch must be >= 1 and max_waiting >= 0, got {max_batch}, {max_waiting}.")
        self.model, self.tok = model.eval(), tok
        cfg = model.config
        limit = cfg.max_position_embeddings
        self.context_len = min(context_len or limit, limit)
        self.max_batch, self.max_waiting, self.prefill_chunk = max_batch, max_waiting, prefill_chunk
        self.think_threshold = think_threshold
        self.device = next(model.parameters()).device
        self.pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.stops = torch.tensor(stop_ids(tok), dtype=torch.long)
        self.stop_set = set(self.stops.tolist())
        # a spare quarter context lets the window slide without a copy on most steps
        self.cache = SlotCache(cfg, max_batch, self.context_len + max(64, self.context_len // 4),
                               dtype=next(model.parameters()).dtype, device=self.device)
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Condition()
        self.ids = itertools.count()
        self.steps = 0
        self.cancelled = 0  # requests dropped because their consumer went away
        self._admitting: list[Sequence] = []
        self.error: str | None = None
        self._stop = False
        self.speculation = None
        if drafter is not None:
            from duomind.serve.speculate import SoloSpeculation

            self.speculation = SoloSpeculation(self, drafter)
        self.thread = threading.Thread(target=self._loop, name="duomind-engine", daemon=True)
        self.thread.start()

    # --- public API (any thread) ---
    def check(self, n_prompt: int, max_tokens: int) -> None:
        """Raise ValueError if a request cannot fit in the context."""
        if n_prompt < 1:
            raise ValueError("the prompt is empty; send at least one token of text.")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if n_prompt + max_tokens > self.context_len:
            raise ValueError(f"this model's context is {self.context_len} tokens, but the request needs "
                             f"{n_prompt + max_tokens} ({n_prompt} in the prompt + {max_tokens} max_tokens); "
                             "shorten the prompt or lower max_tokens.")

    def submit(self, ids: list[int], params: SamplingParams, control: ThinkingControl | None,
               sink: Callable[[Delta], None]) -> Handle:
        """Queue a request; `sink` receives its Deltas from the engine thread, the last with finish_reason."""
        self.check(len(ids), params.max_tokens)
        handle = Handle(next(self.ids))
        seq = Sequence(handle, list(ids), params, control, sink, self.tok, self.device)
        with self.lock:
            if self._stop:
                raise Overloaded("the engine is shutting down.")
            if len(self.waiting) >= self.max_waiting and len(self.running) + len(self.waiting) >= self.max_batch:
                raise Overloaded(f"server busy: {len(self.running)} requests running and {len(self.waiting)} "
                                 "waiting, the most it accepts; retry later.")
            self.waiting.append(seq)
            self.lock.notify()
        return handle

    def stats(self) -> dict:
        with self.lock:
            return {"running": len(self.running), "waiting": len(self.waiting), "max_batch": self.max_batch,
                    "max_waiting": self.max_waiting, "steps": self.steps, "cancelled": self.cancelled, "alive": self.thread.is_alive(),
                    "context_len": self.context_len,
                    "speculation": self.speculation.stats() if self.speculation is not None else None}

    def close(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify()
        self.thread.join(timeout=30)

    # --- engine thread ---
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                while not self._stop and not self.running and not self.waiting:
                    self.lock.wait()
                if self._stop:
                    break
            try:
                with torch.inference_mode():
                    self.step()
            except Exception as err:  # one bad step must not take the server down: fail its requests, go on
                self.error = f"{type(err).__name__}: {err}"
                for seq in [*self.running, *(s for s in self._admitting if s not in self.running)]:
                    self._emit(seq, Delta(finish_reason="error", error=self.error))
                self.running, self.cache.rows, self.cache.length = [], 0, 0
                if self.speculation is not None:
                    self.speculation.current = None
        for seq in [*self.running, *self.waiting]:
            self._emit(seq, Delta(finish_reason="error", error="the server is shutting down"))

    def step(self) -> None:
        """One engine step: drop cancelled, admit waiting (prefill), decode one token for all running."""
        gone = [s for s in self.running if s.handle.cancelled]
        self._drop(gone)
        with self.lock:
            self.cancelled += len(gone)
            admitted = []
            while self.waiting and len(self.running) + len(admitted) < self.max_batch:
                seq = self.waiting.popleft()
                if seq.handle.cancelled:
                    self.cancelled += 1
                else:
                    admitted.append(seq)
        self._admitting = admitted  # taken off the queue: a failing step must still answer them
        for i in range(0, len(admitted), self.prefill_chunk):
            self._prefill(admitted[i:i + self.prefill_chunk])
        self._admitting = []
        if self.running:
            if self.speculation is not None and self.speculation.ready():
                self.speculation.step()
            else:
                self._decode()
        self.steps += 1

    def _prefill(self, seqs: list[Sequence]) -> None:
        ids, mask = left_pad([s.ids for s in seqs], self.pad)
        b, width = ids.shape
        tmp = KVCache(self.model.config, b, width, dtype=self.cache.k.dtype, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        padded = bool((mask == 0).any())
        logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device) if padded else None,
                            position_ids=positions.to(self.device), cache=tmp, logits_to_keep=1).logits[:, -1]
        cache, n = self.cache, len(self.running)
        used = max((cache.length - s.start for s in self.running), default=0)
        end = max(cache.length if n else 0, width, used)
        if end + 1 > cache.max_len:  # no room to append: slide the used window back to the start
            end = max(width, used)
        shift = end - cache.length
        cache.move_window(used, end)
        for s in self.running:
            s.start += shift
        cache.k[:, n:n + b, :, end - width:end] = tmp.k
        cache.v[:, n:n + b, :, end - width:end] = tmp.v
        for s in seqs:
            s.start = end - len(s.ids)
        self.running += seqs
        cache.rows = len(self.running)
        self._choose(seqs, logits)

    def _decode(self) -> None:
        cache, run = self.cache, self.running
        used = max(cache.length - s.start for s in run)
        if cache.length + 1 > cache.max_len or cache.length - used >= max(64, used):
            shift = used - cache.length  # slide the window back to column 0
            cache.move_window(used, used)
            for s in run:
                s.start += shift
        last = torch.tensor([[s.out[-1]] for s in run], device=self.device)
        starts = torch.tensor([s.start for s in run], device=self.device)
        cols = torch.arange(cache.length + 1, device=self.device)
        mask = (cols[None, :] >= starts[:, None]).long()
        positions = (cache.length - starts)[:, None]
        logits = self.model(last, attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1]
        self._choose(list(run), logits)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token (mode rules, sampling), emit text, retire finished ones."""
        logits = logits.float()
        for i, s in enumerate(seqs):
            if s.control is not None:
                s.control.constrain(logits[i])
        tokens = logits.argmax(-1).tolist()
        for i, s in enumerate(seqs):
            p = s.params
            if p.temperature > 0:
                tokens[i] = int(sample(logits[i:i + 1], p.temperature, p.top_k, p.top_p, s.generator))
        done = []
        for s, token in zip(seqs, tokens):
            self._advance(s, token)
            if s.finished:
                done.append(s)
        self._drop(done)

    def _advance(self, s: Sequence, token: int) -> None:
        s.out.append(token)
        c = s.control
        was_thinking = c is not None and c.thinking
        if c is not None:
            c.observe(token)
        delta = Delta()
        if token in self.stop_set and not s.params.ignore_eos:
            s.finished = "stop"
        elif was_thinking:
            if c.thinking:
                s.reasoning_tokens += 1
                delta.reasoning = s.thought.push(token)
            else:  # the span just closed
                s.reasoning_tokens += 1
                delta.reasoning = s.thought.flush()
        elif c is not None and (token == c.think or token == c.end_think):
            s.reasoning_tokens += 1  # the opening tag
        else:
            s.answer.push(token)
        if s.finished is None and len(s.out) >= s.params.max_tokens:
            s.finished = "length"
        if s.finished is not None:
            if c is not None and c.thinking:
                delta.reasoning += s.thought.flush()
            s.answer.flush()
        self._answer_delta(s, delta)
        if s.finished is not None:
            delta.finish_reason = s.finished
            delta.prompt_tokens, delta.completion_tokens = len(s.ids), len(s.out)
            delta.reasoning_tokens, delta.token_ids = s.reasoning_tokens, list(s.out)
            delta.mode = c.chosen if c is not None else None
            if c is not None:
                delta.info = {"thinking_tokens": len(c.thought), "budget_hit": c.budget_hit, "repairs": c.repairs}
        if delta.reasoning or delta.content or delta.finish_reason:
            self._emit(s, delta)

    def _answer_delta(self, s: Sequence, delta: Delta) -> None:
        text, stops = s.answer.sent, list(s.params.stop)
        cut = cut_at_stop(text, stops) if stops else None
        if cut is not None:
            safe, s.finished = cut, "stop"
        elif s.finished is not None or not stops:
            safe = len(text)
        else:
            safe = len(text) - held_back(text, stops)
        if safe > s.sent_answer:
            delta.content = text[s.sent_answer:safe]
            s.sent_answer = safe

    def _drop(self, seqs: list[Sequence]) -> None:
        """Remove sequences from the batch: the last row moves into each freed slot."""
        for s in seqs:
            row = self.running.index(s)
            last = len(self.running) - 1
            if row != last:
                self.cache.copy_row(last, row)
                self.running[row] = self.running[last]
            self.running.pop()
            self.cache.rows = len(self.running)
        if not self.running:
            self.cache.length = 0

    def _emit(self, s: Sequence, delta: Delta) -> None:
        try:
            s.sink(delta)
        except Exception:  # a consumer that went away must not stop the engine
            s.handle.cancel()


def wait_idle(engine: Engine, timeout: float = 30.0) -> bool:
    """Block until the engine has nothing running or waiting (tests, benchmarks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = engine.stats()
        if not st["running"] and not st["waiting"]:
            return True
        time.sleep(0.01)
    return False
