"""Shared benchmark plumbing: CLI flags, timing statistics, provenance, JSON + PNG output.

Every benchmark compares its contenders side by side in one run and reports medians, spreads and ratios,
because these machines are noisy. `--quick` runs tiny sizes in seconds (a test does this) and writes to a
temporary directory unless `--out` is given, never over benchmarks/results/.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from duomind.machine import cpu_shares, cpu_times
from duomind.sim.calibrate import cpu_name  # torch-free at import

CPU_AT_START = cpu_times()  # the machine's CPU times when the benchmark started, for its load record

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds; writes to a temp dir unless --out")
    p.add_argument("--out", type=Path, default=None, help="directory for <name>.json and <name>.png")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores); use 1 while another process loads the machine, "
                        "where spinning intra-op threads slow small ops by orders of magnitude")
    return p


def scratch(prefix: str) -> Path:
    """A temporary directory for a run's intermediate files (models, checkpoints), removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def out_dir(args: argparse.Namespace) -> Path:
    """Where results go (see the module docstring); also applies --threads."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return args.out
    if args.quick:
        return Path(tempfile.mkdtemp(prefix="duomind-bench-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


def provenance() -> dict:
    """How a result was produced: command, commit, date, machine."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    info = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": commit,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(),
                        # shares of all CPU time since the benchmark started, its own work included
                        "load_during_run": {k: round(v, 4) for k, v in cpu_shares(CPU_AT_START, cpu_times()).items()}}}
    try:
        import torch

        info["machine"]["torch"] = torch.__version__
        info["machine"]["torch_threads"] = torch.get_num_threads()
        info["machine"]["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def stats(samples: list[float]) -> dict:
    """Median and spread of repeated measurements."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"median": statistics.median(s), "p25": q[0], "p75": q[2], "min": s[0], "max": s[-1], "n": len(s),
            "rel_iqr": (q[2] - q[0]) / statistics.median(s) if statistics.median(s) else 0.0}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def write(name: str, result: dict, directory: Path) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps({**result, "provenance": provenance()}, indent=2))
    print(f"wrote {path}")
    return path


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


CACHE = Path(os.environ.get("DUOMIND_CACHE", Path(__file__).resolve().parent.parent / ".duomind_cache"))


def base_model(quick: bool = False) -> Path:
    """The shared benchmark model of recipes/bench-base.yaml, built once and cached (tiny in --quick mode).

    Returns the final checkpoint directory. The cache lives in .duomind_cache/ (or $DUOMIND_CACHE); a partly
    trained model resumes where it stopped.
    """
    from duomind.config import TrainConfig, from_dict, load_mapping
    from duomind.tasks.cli import make
    from duomind.tokenizer import train_cli
    from duomind.train.loop import train

    recipe = load_mapping(Path(__file__).resolve().parent.parent / "recipes" / "bench-base.yaml")
    root = CACHE / ("bench-base-quick" if quick else "bench-base")
    data, tok = root / "data", root / "tokenizer"
    if not (data / "corpus.txt").is_file():
        make(out_dir=str(data), n=400 if quick else 40000, seed=0)
    if not (tok / "tokenizer.json").is_file():
        train_cli(str(data / "corpus.txt"), out=str(tok), vocab_size=384 if quick else 2048)
    recipe.update(out_dir=str(root / "run"), data=str(data / "corpus.txt"), tokenizer=str(tok))
    if quick:
        recipe.update(model_preset="tiny", model={}, max_steps=4, seq_len=64, global_batch_size=4,
                      micro_batch_size=4, save_every=4, progress=False)
    return train(from_dict(TrainConfig, recipe, "recipes/bench-base.yaml"))
