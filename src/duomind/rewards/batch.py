"""Batch scoring: pure sources in a worker pool, the judge batched, MARS combination in input order.

`Scorer` is what `duomind reward score` and `duomind reward serve` share:

1. validate every record (a bad record gets verdict `invalid` and reward 0; the rest still score);
2. run the registered per-record sources in a process pool (math checks need a main thread for
   their time limit, and CPU-bound checks need processes to use more than one core);
3. judge the records whose task weights the judge, in batches, through the configured backend;
4. combine with `Mars` in input order and attach reward, components, verdict and detail.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor

from duomind.progress import progress_bar
from duomind.rewards.config import RewardConfig
from duomind.rewards.judge import Complete, judge, make_backend
from duomind.rewards.mars import Mars
from duomind.rewards.record import Record, RecordError, parse_record
from duomind.rewards.sources import JUDGE, SOURCES, Component

# the source that decides a task's verdict
CORRECTNESS = {"math": "math", "code": "code", "general": JUDGE}
_CHUNK = {"math": 32, "code": 2, "general": 32}  # records per pool task: cheap checks travel in bulk


def local_components(record: Record, cfg: RewardConfig) -> dict[str, Component]:
    """Every weighted per-record source for one record (what a pool worker computes)."""
    weights = cfg.weights.get(record.task, {})
    names = [n for n in weights if n != JUDGE and (weights[n] != 0 or n == CORRECTNESS[record.task])]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown reward source(s) {unknown} in weights for task {record.task!r}; "
                         f"registered: {sorted(SOURCES)}")
    return {n: SOURCES[n](record, cfg) for n in names}


_worker_cfg: RewardConfig | None = None


def _init_worker(cfg: RewardConfig) -> None:
    global _worker_cfg
    _worker_cfg = cfg
    from duomind.rewards import math as math_reward

    math_reward.equivalent("1/2", "0.5")  # import sympy and math-verify once, before the first real check


def _score_chunk(records: list[Record]) -> list[dict[str, Component]]:
    return [local_components(r, _worker_cfg) for r in records]


class Scorer:
    """Score reward records with a worker pool, a judge backend and one MARS combiner.

    Args:
        cfg: reward configuration.
        workers: pool processes; 0 scores in the calling thread (small jobs, tests).
        complete: judge backend; by default the one `cfg.judge` describes.
    """

    def __init__(self, cfg: RewardConfig | None = None, workers: int = 2, complete: Complete | None = None):
        self.cfg = cfg or RewardConfig()
        self.mars = Mars(self.cfg)
        self.complete = complete if complete is not None else make_backend(self.cfg.judge)
        self._pool = None
        if workers > 0:
            # spawn, not fork: the service and judge backends hold threads a fork would copy mid-flight
            self._pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.cfg,))
        self._combine_lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, raw_records: list[dict], progress: bool = False) -> list[dict]:
        """Score records; return them with `reward`, `components`, `verdict` and `detail` added."""
        parsed: list[Record | RecordError] = []
        for raw in raw_records:
            try:
                parsed.append(parse_record(raw))
            except RecordError as e:
                parsed.append(e)
        valid = [(i, r) for i, r in enumerate(parsed) if isinstance(r, Record)]
        needs_judge = [(i, r) for i, r in valid if self.cfg.weights.get(r.task, {}).get(JUDGE, 0) != 0
                       or CORRECTNESS[r.task] == JUDGE]
        if needs_judge and self.complete is None:
            raise ValueError(f"{len(needs_judge)} record(s) need the LLM judge but none is configured; set "
                             "judge.backend to http or local (or give those tasks a judge weight of 0 and no "
                             "general records)")
        components: dict[int, dict[str, Component]] = {}
        with progress_bar("scoring", len(valid) + len(needs_judge), enabled=progress, unit="rec") as advance:
            self._run_sources(valid, components, advance)
            for start in range(0, len(needs_judge), 64):
                part = needs_judge[start: start + 64]
                results = judge([r.prompt for _, r in part], [r.response for _, r in part],
                                [r.reference for _, r in part], self.complete, self.cfg.judge.rubric)
                for (i, _), res in zip(part, results):
                    components[i][JUDGE] = Component(res.value, res.verdict, {"raw": res.raw[-2000:]})
                advance(len(part))
        out = []
        with self._combine_lock:  # one request's records enter the running statistics together, in order
            for raw, rec, i in zip(raw_records, parsed, range(len(parsed))):
                out.append(self._finish(raw, rec, components.get(i)))
        return out

    def _run_sources(self, valid: list[tuple[int, Record]], components: dict, advance) -> None:
        for i, _ in valid:
            components[i] = {}
        if self._pool is None:
            for i, r in valid:
                components[i] = local_components(r, self.cfg)
                advance(1)
            return
        futures: list[tuple[list[int], Future]] = []
        for task in CORRECTNESS:
            group = [(i, r) for i, r in valid if r.task == task]
            size = _CHUNK[task]
            for s in range(0, len(group), size):
                part = group[s: s + size]
                futures.append(([i for i, _ in part], self._pool.submit(_score_chunk, [r for _, r in part])))
        for ids, fut in futures:
            for i, comps in zip(ids, fut.result()):
                components[i] = comps
            advance(len(ids))

    def _finish(self, raw: dict, rec: Record | RecordError, comps: dict[str, Component] | None) -> dict:
        base = dict(raw) if isinstance(raw, dict) else {"record": raw}
        if isinstance(rec, RecordError):
            return {**base, "reward": 0.0, "components": {}, "verdict": "invalid", "detail": {"error": str(rec)}}
        values = {n: c.value for n, c in comps.items()}
        reward, normalized = self.mars.combine(rec.task, values)
        weights = self.cfg.weights.get(rec.task, {})
        main = comps.get(CORRECTNESS[rec.task])
        detail = {n: c.detail for n, c in comps.items() if c.detail}
        detail.update(normalized=normalized, weights={n: weights.get(n, 0.0) for n in comps})
        return {**base, "reward": reward, "components": values, "verdict": main.verdict if main else None,
                "detail": detail}


