"""Reward configuration: MARS source weights per task type, normalisation, verifier and judge settings.

Plain dataclasses (no torch), so `duomind reward score --config recipes/rewards-mars.yaml` and flags
such as `--rewards.judge.backend http` fill them through jsonargparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duomind.rewards.sandbox import Limits


def _default_weights() -> dict[str, dict[str, float]]:
    # correctness dominates; format and repetition shape behaviour; length is opt-in
    return {
        "math": {"math": 1.0, "format": 0.2, "repetition": 0.2, "length": 0.0},
        "code": {"code": 1.0, "format": 0.2, "repetition": 0.2, "length": 0.0},
        "general": {"judge": 1.0, "format": 0.2, "repetition": 0.2, "length": 0.0},
    }


@dataclass
class JudgeConfig:
    """The LLM judge for general tasks.

    Args:
        backend: `none`, `http` (any OpenAI-compatible endpoint) or `local` (a DuoMind checkpoint).
        url: base URL of the OpenAI-compatible API (the part before `/chat/completions`).
        model: model name sent to the endpoint.
        api_key_env: name of the environment variable that holds the API key (the key never goes in a config).
        timeout_s: per-request timeout.
        retries: retries per request on connection errors, 429 and 5xx.
        concurrency: requests in flight at once.
        max_tokens: tokens the judge may write.
        checkpoint: DuoMind checkpoint directory for the `local` backend.
        rubric: rubric text replacing the default one.
    """

    backend: str = "none"
    url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 3
    concurrency: int = 8
    max_tokens: int = 512
    checkpoint: str = ""
    rubric: str | None = None


@dataclass
class RewardConfig:
    """MARS reward settings (arXiv 2505.22375).

    Args:
        weights: per task type, the weight of each source (math, code, judge, format, repetition, length).
        normalize: scale each source by its running statistics before weighting.
        norm_warmup: observations per (task, source) before normalisation starts (raw values until then).
        norm_window: horizon of the running mean and variance (exponential after this many observations).
        norm_min_std: floor on the running standard deviation, so rare deviations stay bounded.
        norm_clip: bound on a normalised component.
        math_timeout_s: time limit per math equivalence check.
        code_all_or_nothing: code value 1 only if every test passes (else the pass rate).
        isolation: sandbox isolation (`auto`, `bwrap`, `unshare`, `none`).
        sandbox: sandbox resource limits per program.
        repetition_ngram: n of the word n-grams the repetition penalty counts.
        repetition_free: repeated n-gram fraction tolerated before the penalty starts.
        length_target: words allowed before the length term starts to bite.
        length_limit: words at which the length term reaches -1.
        judge: the LLM judge.
    """

    weights: dict[str, dict[str, float]] = field(default_factory=_default_weights)
    normalize: bool = True
    norm_warmup: int = 32
    norm_window: int = 1024
    norm_min_std: float = 0.1
    norm_clip: float = 5.0
    math_timeout_s: float = 2.0
    code_all_or_nothing: bool = False
    isolation: str = "auto"
    sandbox: Limits = field(default_factory=Limits)
    repetition_ngram: int = 4
    repetition_free: float = 0.1
    length_target: int = 2048
    length_limit: int = 4096
    judge: JudgeConfig = field(default_factory=JudgeConfig)
