"""MARS rewards (Pangu Embedded, arXiv 2505.22375): math verifier, code in a sandbox, LLM judge, format.

    from duomind.rewards import Scorer, RewardConfig
    with Scorer(RewardConfig(), workers=2) as scorer:
        scored = scorer.score([{"id": 1, "task": "math", "prompt": "1+1?", "response": "\\\\boxed{2}", "answer": "2"}])

Modules: `record` (format), `math`, `code` + `sandbox` + `harness`, `judge`, `format`, `sources`
(registry), `mars` (combination), `batch` (pool), `service` (HTTP), `cli`. Imports are lazy, so
`import duomind.rewards` does not pull in sympy or torch.
"""

from __future__ import annotations

from duomind import lazy_exports

_LAZY = {
    "Scorer": "duomind.rewards.batch",
    "RewardConfig": "duomind.rewards.config",
    "JudgeConfig": "duomind.rewards.config",
    "Mars": "duomind.rewards.mars",
    "Record": "duomind.rewards.record",
    "parse_record": "duomind.rewards.record",
    "SOURCES": "duomind.rewards.sources",
    "register_source": "duomind.rewards.sources",
    "Component": "duomind.rewards.sources",
    "run_program": "duomind.rewards.sandbox",
    "Limits": "duomind.rewards.sandbox",
    "isolation": "duomind.rewards.sandbox",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
