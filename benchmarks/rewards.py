"""MARS rewards: math verifier throughput and accuracy, sandboxed code throughput per isolation mode.

    python benchmarks/rewards.py            # full run -> benchmarks/results/rewards.{json,png}
    python benchmarks/rewards.py --quick    # seconds; writes to a temp dir

Claims (goals from the issue): math_checks_per_second >= 1000 and code_programs_per_second >= 20
with 2 workers and full isolation; verifier accuracy >= 0.98 on the hand-written equivalence suite
(>= 200 cases), failures listed. Every rate is a median over repeats, with its spread, measured
through the same `Scorer` batch path that `duomind reward score` uses.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import _common
from duomind.rewards import math as math_reward
from duomind.rewards import sandbox
from duomind.rewards.batch import Scorer
from duomind.rewards.config import RewardConfig
from duomind.rewards.suite import CASES

GOALS = {"math_checks_per_second": 1000, "code_programs_per_second": 20, "math_verifier_accuracy": 0.98}

# ------------------------------------------------------------------------------------------- workloads


def _answer(rng: random.Random, offset: int = 0) -> tuple[str, list[str], list[str]]:
    """A reference answer, equivalent surface forms of it, and near-miss wrong answers.

    Mix modelled on competition/grade-school answer types: mostly integers, then fractions,
    decimals and percentages, and about one in six symbolic (radicals, polynomials, sets, intervals).
    `offset` shifts the numbers, so batches with different offsets share no (answer, reference) pair.
    """
    a, b = offset + rng.randint(2, 999), rng.randint(2, 97)
    kind = rng.choices(["int", "frac", "dec", "pct", "sym"], [55, 15, 8, 6, 16])[0]
    if kind == "int":
        return str(a), [str(a), f"{a}.0", f"{a} \\text{{ cm}}"], [str(a + 1), str(a - 1), str(10 * a)]
    if kind == "frac":
        return f"\\frac{{{a}}}{{{b}}}", [f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}"], \
            [f"\\frac{{{b}}}{{{a}}}", f"\\frac{{{a + 1}}}{{{b}}}"]
    if kind == "dec":
        return f"{a / 8}", [f"{a / 8}", f"{a}/8", f"\\frac{{{a}}}{{8}}"], [f"{a / 8 + 0.5}", f"{a / 4}"]
    if kind == "pct":
        return f"{a}\\%", [f"{a}\\%", f"{a}", f"{a / 100}"], [f"{a + 1}\\%"]
    k = rng.randint(2, 9)
    return rng.choice([
        (f"{a}\\sqrt{{{b}}}", [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"], [f"{a + 1}\\sqrt{{{b}}}"]),
        (f"x^2 + {2 * a}x + {a * a}", [f"(x+{a})^2", f"x^2+{2 * a}x+{a * a}"], [f"(x-{a})^2"]),
        (f"\\{{{a}, {b}\\}}", [f"\\{{{b}, {a}\\}}", f"\\{{{a},{b}\\}}"], [f"\\{{{a}, {b + 1}\\}}"]),
        (f"[{k}, {a})", [f"[{k},{a})"], [f"({k}, {a})", f"[{k}, {a}]"]),
    ])


def math_records(n_prompts: int, group: int, seed: int = 0) -> list[dict]:
    """RL-like batch: `group` samples per prompt, ~60% right in varied forms, each with its own text.

    Samples of one prompt often repeat an answer (as in RL), but batches of different seeds share none.
    """
    rng = random.Random(seed)
    out = []
    for p in range(n_prompts):
        gold, right, wrong = _answer(rng, offset=1000 * seed)
        for s in range(group):
            ans = rng.choice(right) if rng.random() < 0.6 else rng.choice(wrong)
            text = f"<think>\nStep {p}.{s}: work it out ({rng.random():.6f}).\n</think>\n\nSo the answer is \\boxed{{{ans}}}."
            out.append({"id": f"{p}.{s}", "task": "math", "prompt": f"problem {p}", "response": text,
                        "answer": gold, "mode": "slow"})
    return out


def slow_records(n: int, seed: int = 1) -> list[dict]:
    """Worst case: every answer distinct and outside the fast paths, so math-verify parses each one."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k, m = 1000 * seed + rng.randint(2, 99), rng.randint(2, 99)  # no answer shared across seeds
        gold, resp = rng.choice([(f"y = {k}x + {m}", f"y = {m} + {k}x"),
                                 (f"(-\\infty, {k}) \\cup ({k + m}, \\infty)", f"({k + m}, \\infty) \\cup (-\\infty, {k})"),
                                 (f"\\sin^2 x + \\cos^2 x + {k}", f"{k + 1}")])
        out.append({"id": i, "task": "math", "prompt": "p", "response": f"\\boxed{{{resp}}}", "answer": gold})
    return out


PROGRAMS = [
    ("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     ["assert fib(0) == 0", "assert fib(10) == 55", "assert fib(20) == 6765"]),
    ("def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n",
     ["assert is_prime(2)", "assert not is_prime(9)", "assert is_prime(97)", "assert not is_prime(1)"]),
    ("def rev(s):\n    return s[::-1]\n", ["assert rev('abc') == 'cba'", "assert rev('') == ''", "assert rev('ab') == 'ab'"]),
    ("from collections import Counter\n\ndef mode(xs):\n    return Counter(xs).most_common(1)[0][0]\n",
     ["assert mode([1, 2, 2]) == 2", "assert mode('aab') == 'a'"]),
]


def code_records(n: int) -> list[dict]:
    return [{"id": i, "task": "code", "prompt": "p", "response": f"```python\n{PROGRAMS[i % len(PROGRAMS)][0]}```",
             "tests": PROGRAMS[i % len(PROGRAMS)][1]} for i in range(n)]


# ------------------------------------------------------------------------------------------- measuring


def rate(scorer: Scorer, batches: list[list[dict]]) -> dict:
    """Records per second through `scorer`: the first batch warms the pool, each other is one timed repeat.

    Math batches differ from repeat to repeat (other seeds), so no repeat is served from the caches
    a previous one filled.
    """
    scorer.score(batches[0])
    rates = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        scorer.score(batch)
        rates.append(len(batch) / (time.perf_counter() - t0))
    return {**_common.stats(rates), "records": len(batches[1])}


def math_rates(scorer: Scorer, workers: int, quick: bool) -> dict:
    """The RL mix and the slow-path-only workload through one scorer."""
    n_prompts, group, repeats = (16, 8, 1) if quick else (250, 8, 5)
    n_slow = 4 if quick else 200
    return {
        f"rl_mix_w{workers}": rate(scorer, [math_records(n_prompts, group, seed=10 * workers + r)
                                           for r in range(repeats + 1)]),
        f"slow_path_w{workers}": rate(scorer, [slow_records(n_slow, seed=100 + 10 * workers + r)
                                              for r in range(max(1, repeats // 2) + 1)]),
    }


def code_rate(scorer: Scorer, quick: bool) -> dict:
    n, repeats = (8, 1) if quick else (120, 5)
    recs = code_records(n)
    return rate(scorer, [recs[: max(4, n // 10)]] + [recs] * repeats)


def throughput(full_mode: str, quick: bool) -> tuple[dict, dict]:
    """Math rates with 2 workers (and 1, for scaling) and code rates with 2 workers per isolation mode.

    --quick measures only the 2-worker pool in the strongest mode (one pool, so it takes seconds).
    """
    math_tp, code_tp = {}, {}
    with Scorer(RewardConfig(isolation=full_mode), workers=2) as scorer:
        math_tp.update(math_rates(scorer, 2, quick))
        code_tp[full_mode] = code_rate(scorer, quick)
    if quick:
        return math_tp, code_tp
    with Scorer(RewardConfig(), workers=1) as scorer:
        math_tp.update(math_rates(scorer, 1, quick))
    for mode in [m for m in sandbox.MODES if m != full_mode and sandbox._works(m)]:
        with Scorer(RewardConfig(isolation=mode), workers=2) as scorer:
            code_tp[mode] = code_rate(scorer, quick)
    return math_tp, code_tp


def accuracy(quick: bool) -> dict:
    """The verifier on the hand-written equivalence suite (--quick: every 8th case)."""
    cases = CASES[::8] if quick else CASES
    t0 = time.perf_counter()
    failures, by_kind, totals = [], Counter(), Counter()
    for gold, response, expected, kind in cases:
        res = math_reward.score(response, gold)
        totals[kind] += 1
        if (res.value == 1.0) == expected:
            by_kind[kind] += 1
        else:
            failures.append({"reference": gold, "response": response, "expected": expected, "verdict": res.verdict,
                             "extracted": res.extracted, "kind": kind})
    return {"cases": len(cases), "accuracy": 1 - len(failures) / len(cases), "failures": failures,
            "by_kind": {k: by_kind[k] / totals[k] for k in sorted(totals)}, "seconds": time.perf_counter() - t0}


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    directory = _common.out_dir(args)
    info = sandbox.isolation()
    full = info["mode"]
    acc = accuracy(args.quick)
    math_tp, code_tp = throughput(full, args.quick)
    result = {
        "name": "rewards",
        "quick": args.quick,
        "math_checks_per_second": math_tp["rl_mix_w2"]["median"],
        "code_programs_per_second": code_tp[full]["median"],
        "code_isolation": full + ("+uid" if info["private_uid"] else ""),
        "math_verifier_accuracy": acc["accuracy"],
        "math_verifier_failures": acc["failures"],
        "goals": GOALS,
        "goals_met": {},
        "workers": 2,
        "math": {"workloads": {"rl_mix": "8 samples per prompt, ~60% right in varied forms; 55% integer, 15% "
                               "fraction, 8% decimal, 6% percent, 16% symbolic answers; no answer shared "
                               "across batches",
                               "slow_path": "every answer distinct and outside the fast paths (equations, "
                               "unions, trigonometry): math-verify parses each (worst case)"},
                 "rates": math_tp},
        "code": {"workload": f"{len(PROGRAMS)} small programs with 2-4 assert tests each, one sandbox per program",
                 "rates_by_isolation": code_tp, "isolation_report": info},
        "accuracy": {k: v for k, v in acc.items() if k != "failures"},
    }
    if "rl_mix_w1" in math_tp:
        result["math"]["scaling_2_vs_1_worker"] = math_tp["rl_mix_w2"]["median"] / math_tp["rl_mix_w1"]["median"]
    if "none" in code_tp:  # how much slower each mode is than rlimits + guard alone
        result["code"]["slowdown_vs_none"] = {m: code_tp["none"]["median"] / r["median"] for m, r in code_tp.items()}
    result["goals_met"] = {k: result[k] >= v for k, v in GOALS.items()}
    _common.write("rewards", result, directory)
    _plot(result, directory / "rewards.png")
    print(f"{'metric':38s} {'median':>10s} {'IQR':>17s} {'goal':>6s}")
    rows = [*((f"math checks/s {k}", v, GOALS["math_checks_per_second"] if k == "rl_mix_w2" else "")
              for k, v in math_tp.items()),
            *((f"code programs/s w2 {m}", v, GOALS["code_programs_per_second"] if m == full else "")
              for m, v in code_tp.items())]
    for name, r, goal in rows:
        print(f"{name:38s} {r['median']:10.1f} {r['p25']:8.1f}-{r['p75']:<8.1f} {goal:>6}")
    print(f"{'math verifier accuracy':38s} {acc['accuracy']:10.4f} {'':17s} {GOALS['math_verifier_accuracy']:6}"
          f"  ({acc['cases']} cases, {len(acc['failures'])} failures)")
    for f in acc["failures"]:
        print(f"  FAIL [{f['kind']}] reference {f['reference']!r} response {f['response']!r}: {f['verdict']}")
    print("goals met:", result["goals_met"])


def _plot(result: dict, path: Path) -> None:
    plt = _common.figure()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rates = result["math"]["rates"]
    names = list(rates)
    axes[0].bar(names, [rates[n]["median"] for n in names],
                yerr=[[rates[n]["median"] - rates[n]["p25"] for n in names],
                      [rates[n]["p75"] - rates[n]["median"] for n in names]], color="tab:blue")
    axes[0].axhline(1000, color="k", ls="--", lw=1, label="goal 1000/s")
    axes[0].set_yscale("log")  # the slow path (math-verify parses every answer) is two orders slower
    axes[0].set_title("math checks / s (median, IQR; log scale)")
    axes[0].tick_params(axis="x", rotation=30)
    axes[0].legend()
    code = result["code"]["rates_by_isolation"]
    labels = [result["code_isolation"] if m == result["code_isolation"].split("+")[0] else m for m in code]
    axes[1].bar(labels, [r["median"] for r in code.values()],
                yerr=[[r["median"] - r["p25"] for r in code.values()], [r["p75"] - r["median"] for r in code.values()]],
                color="tab:green")
    axes[1].axhline(20, color="k", ls="--", lw=1, label="goal 20/s")
    axes[1].set_title("sandboxed programs / s, 2 workers")
    axes[1].legend()
    kinds = result["accuracy"]["by_kind"]
    axes[2].barh(list(kinds), list(kinds.values()), color="tab:orange")
    axes[2].set_xlim(0.8, 1.0)
    axes[2].set_title(f"math verifier accuracy {result['math_verifier_accuracy']:.3f} ({result['accuracy']['cases']} cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
