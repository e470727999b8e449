"""Serving throughput: tokens/s, latency and time to first token with 1, 4 and 16 concurrent streaming clients.

`duomind serve` runs the shared bench-base model (benchmarks/_common.py:base_model) in its own process with
continuous batching (16 slots, one torch thread); the clients here stream `/v1/completions` over HTTP, each
one request after another (a closed loop). Every request generates exactly `--new_tokens` tokens
(`ignore_eos`), so all concurrency levels do the same work per request. Levels run in rounds, in a rotated
order each round, so machine noise hits all of them alike.

    python benchmarks/serve.py --threads 1     # full: benchmarks/results/serve.{json,png}
    python benchmarks/serve.py --quick
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common

LEVELS = (1, 4, 16)


def bench_model(quick: bool) -> tuple[Path, dict]:
    """bench-base; while its training still runs, a copy of its latest complete checkpoint.

    Throughput does not depend on the weights here (every request generates exactly --new_tokens tokens), only
    on the shape, which every checkpoint of the run shares. The copy keeps the trainer's checkpoint pruning
    from pulling files out from under the server.
    """
    import shutil

    from duomind.config import load_mapping
    from duomind.train.checkpoint import latest_checkpoint

    if quick:
        return _common.base_model(quick=True), {"source": "bench-base (quick)"}
    run = _common.CACHE / "bench-base" / "run"
    steps = load_mapping(Path(__file__).resolve().parent.parent / "recipes" / "bench-base.yaml")["max_steps"]
    ckpt = latest_checkpoint(run) if (run / "latest").is_file() else None
    if ckpt is None:
        raise SystemExit("bench-base has no checkpoint yet; build it first (benchmarks/_common.py:base_model).")
    if ckpt.name == f"step-{steps:06d}":
        return ckpt, {"source": "bench-base", "step": steps}
    snap = _common.scratch("serve-bench-model-")
    for f in ckpt.iterdir():  # model, config and tokenizer; not the optimizer state
        if f.is_file() and f.name not in ("optimizer.safetensors", "rng.safetensors", "trainer_state.json", "COMPLETE"):
            shutil.copy2(f, snap / f.name)
    return snap, {"source": "bench-base snapshot (its training was still running)",
                  "step": int(ckpt.name.split("-")[1]), "of_steps": steps}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "duomind.cli", "serve", str(checkpoint), "--port", str(port), "--threads",
           str(threads), "--max_batch", "16", "--max_waiting", "64", "--model_name", "bench"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not come up in 180 s")
        time.sleep(0.3)


async def one_request(client, url: str, prompt: str, new_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens}


async def run_level(url: str, clients: int, per_client: int, new_tokens: int, seed: int) -> dict:
    """`clients` closed-loop streaming clients, `per_client` requests each; aggregate tokens/s."""
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        async def worker(w: int) -> list[dict]:
            out = []
            for i in range(per_client):
                a, b = (seed * 131 + w * 17 + i * 7) % 90 + 10, (w * 29 + i * 13) % 90 + 10
                out.append(await one_request(client, url, f"Q: What is {a} + {b}?\nA:", new_tokens))
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    return {"tokens_per_s": sum(r["tokens"] for r in results) / wall, "wall_s": wall, "requests": results}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=2, help="requests per client per round (level 1: x4)")
    p.add_argument("--checkpoint", type=Path, default=None, help="serve this model instead of the shared bench-base")
    args = p.parse_args()
    if args.quick:
        args.new_tokens, args.rounds, args.requests = 6, 1, 1
    out = _common.out_dir(args)
    threads = args.threads or 1
    if args.checkpoint:
        checkpoint, model_info = args.checkpoint, {"source": str(args.checkpoint)}
    else:
        checkpoint, model_info = bench_model(args.quick)
    load_start = os.getloadavg()  # other work on the machine shows here: absolute tokens/s depend on it
    port = free_port()
    server = start_server(checkpoint, port, threads)
    url = f"http://127.0.0.1:{port}"
    samples: dict[int, list[dict]] = {c: [] for c in LEVELS}
    try:
        asyncio.run(run_level(url, 4, 1, args.new_tokens, seed=99))  # warm-up: first-call costs out of the way
        for r in range(args.rounds):
            order = LEVELS[r % len(LEVELS):] + LEVELS[:r % len(LEVELS)]
            for c in order:
                per = args.requests * (4 if c == 1 else 1)  # level 1 needs more requests for a stable number
                res = asyncio.run(run_level(url, c, per, args.new_tokens, seed=r))
                samples[c].append(res)
                print(f"round {r} clients {c:2d}: {res['tokens_per_s']:7.1f} tokens/s ({res['wall_s']:.1f} s)",
                      flush=True)
        import httpx

        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    levels = {}
    for c, runs in samples.items():
        reqs = [q for run in runs for q in run["requests"]]
        lat, ttft = [q["latency"] for q in reqs], [q["ttft"] for q in reqs]
        levels[str(c)] = {
            "tokens_per_s": _common.stats([run["tokens_per_s"] for run in runs]),
            "latency_s": {"p50": statistics.median(lat), "p95": pct(lat, 0.95)},
            "ttft_s": {"p50": statistics.median(ttft), "p95": pct(ttft, 0.95)},
            "requests": len(reqs), "tokens_per_request": statistics.median(q["tokens"] for q in reqs),
        }
    med = {c: levels[str(c)]["tokens_per_s"]["median"] for c in LEVELS}
    ratio = med[16] / med[1]
    result = {
        "setup": {"model": model_info, "new_tokens": args.new_tokens, "rounds": args.rounds,
                  "max_batch": 16, "server_threads": threads, "endpoint": "/v1/completions (stream, ignore_eos)",
                  "client": "httpx async, closed loop, same machine"},
        "levels": levels,
        "tokens_per_s": {str(c): med[c] for c in LEVELS},
        "throughput_ratio_4_over_1": med[4] / med[1],
        "throughput_ratio_16_over_1": ratio,
        "goal": "throughput_ratio_16_over_1 >= 4",
        "goal_met": ratio >= 4,
        "server_after": {k: health.get(k) for k in ("running", "waiting", "steps", "cancelled")},
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
    }
    _common.write("serve", result, out)
    for c in LEVELS:
        lv = levels[str(c)]
        print(f"{c:2d} clients: {med[c]:7.1f} tokens/s  latency p50 {lv['latency_s']['p50']:.2f} s "
              f"p95 {lv['latency_s']['p95']:.2f} s  TTFT p50 {lv['ttft_s']['p50'] * 1e3:.0f} ms "
              f"p95 {lv['ttft_s']['p95'] * 1e3:.0f} ms")
    print(f"throughput 16 / 1 clients: {ratio:.2f}x (goal >= 4: {'met' if ratio >= 4 else 'not met'})")

    plt = _common.figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    xs = range(len(LEVELS))
    ax1.bar(xs, [med[c] for c in LEVELS], color="tab:blue")
    ax1.errorbar(xs, [med[c] for c in LEVELS], fmt="none", ecolor="k", capsize=4,
                 yerr=[[med[c] - levels[str(c)]["tokens_per_s"]["p25"] for c in LEVELS],
                       [levels[str(c)]["tokens_per_s"]["p75"] - med[c] for c in LEVELS]])
    ax1.set_xticks(list(xs), [f"{c} client{'s' if c > 1 else ''}" for c in LEVELS])
    ax1.set_ylabel("generated tokens / s (median, IQR)")
    ax1.set_title(f"continuous batching: {ratio:.1f}x at 16 vs 1", fontsize=9)
    for i, key in enumerate(("ttft_s", "latency_s")):
        for j, q in enumerate(("p50", "p95")):
            ax2.bar([x + 0.2 * (2 * i + j) - 0.3 for x in xs], [levels[str(c)][key][q] for c in LEVELS], width=0.2,
                    label=f"{'TTFT' if key == 'ttft_s' else 'latency'} {q}")
    ax2.set_xticks(list(xs), [str(c) for c in LEVELS])
    ax2.set_xlabel("concurrent streaming clients")
    ax2.set_ylabel("seconds")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    ax2.set_title(f"{args.new_tokens} tokens per request", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "serve.png")


if __name__ == "__main__":
    sys.exit(main())
