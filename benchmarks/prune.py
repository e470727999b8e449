"""Pruning to 50% of parameters: pangu-light vs minitron (+CLAP, +SLNP) vs shortgpt, before and after KD recovery.

On the bench-base model and a DSSN variant of it (same recipe, norm_style dssn, shorter schedule): prune every
method to <= 50% of the parameters from one importance measurement, then recover each with the same KD budget
from the unpruned model through the trainer. Reports held-out loss and task accuracy right after pruning and
after recovery (with the recovery curves), decode tokens/s of every pruned model vs its original
(duomind.generate, batch 1, alternating rounds), and SLNP's gain factor beside the one that would restore the
kept channels' outputs (`norm_scale`).

    python benchmarks/prune.py --threads 1 --stage recover --models dssn    # prune + KD (train lane), resumable
    python benchmarks/prune.py --threads 1 --stage recover --methods minitron,shortgpt &   # the same, split over
    python benchmarks/prune.py --threads 1 --stage recover --methods minitron+clap,minitron+slnp,pangu-light  # cores
    python benchmarks/prune.py --threads 1 --stage evaluate --models dssn   # + loss, accuracy, decode timing
    python benchmarks/prune.py --threads 1                                  # all of it, reusing what is cached
    python benchmarks/prune.py --quick                       # seconds, temp dir
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path

import _common

METHOD_ORDER = ["minitron", "shortgpt", "minitron+clap", "minitron+slnp", "pangu-light"]
# The DSSN variant: the first 60 steps of a 200-step schedule (LR still near its peak; bench-base has 600 steps).
# Train-lane time on this 2-core machine ran out for more; the comparison is between pruning methods of one model.
DSSN_STEPS, DSSN_SCHEDULE = 60, 200


def dssn_model(quick: bool) -> Path:
    """The bench-base recipe with norm_style dssn (DSSN_STEPS steps), cached beside bench-base; resumable."""
    from duomind.config import TrainConfig, from_dict, load_mapping
    from duomind.train.loop import train

    done = _common.CACHE / "bench-base-dssn" / "run" / f"step-{DSSN_STEPS:06d}"
    if not quick and (done / "COMPLETE").is_file():
        return done
    if quick:
        _common.base_model(True)  # makes the tiny data and tokenizer (the full ones come with bench-base)
    root = _common.CACHE / ("bench-base-quick" if quick else "bench-base")
    recipe = load_mapping(Path(__file__).resolve().parent.parent / "recipes" / "bench-base.yaml")
    recipe.update(out_dir=str(_common.CACHE / ("bench-base-dssn-quick" if quick else "bench-base-dssn") / "run"),
                  data=str(root / "data" / "corpus.txt"), tokenizer=str(root / "tokenizer"),
                  model={**recipe.get("model", {}), "norm_style": "dssn"}, max_steps=DSSN_SCHEDULE, stop_at=DSSN_STEPS,
                  warmup_steps=15, save_every=20, progress=False)
    if quick:
        recipe.update(model_preset="tiny", model={"norm_style": "dssn"}, max_steps=4, seq_len=64, global_batch_size=4,
                      micro_batch_size=4, save_every=4, warmup_steps=2, stop_at=None)
    return train(from_dict(TrainConfig, recipe, "dssn variant of recipes/bench-base.yaml"))


def pre_model(quick: bool, work: Path) -> Path:
    """bench-base; while its training is still running, a copy of its latest complete checkpoint (kept once made,
    so every stage of this benchmark prunes the same model; delete work/bench-base-snapshot to re-take it)."""
    import shutil

    from duomind.train.checkpoint import latest_checkpoint

    snap = work / "bench-base-snapshot"
    run = _common.CACHE / "bench-base" / "run"
    if quick or (snap / "config.json").is_file():
        return _common.base_model(True) if quick else snap
    ckpt = latest_checkpoint(run) if (run / "latest").is_file() else None
    recipe_steps = 600
    if ckpt is not None and ckpt.name == f"step-{recipe_steps:06d}":
        return ckpt  # finished: the real bench-base (base_model() would return the same directory)
    if ckpt is None:
        raise SystemExit("bench-base has no checkpoint yet; build it first (benchmarks/_common.py:base_model).")
    tmp = work / ".snapshot-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():  # model, config and tokenizer; not the optimizer state or the trainer's marker
        if f.is_file() and f.name not in ("optimizer.safetensors", "rng.safetensors", "trainer_state.json", "COMPLETE"):
            shutil.copy2(f, tmp / f.name)
    (tmp / "snapshot.json").write_text(json.dumps({"from": str(ckpt), "step": int(ckpt.name.split("-")[1]),
                                                   "of_steps": recipe_steps}))
    tmp.rename(snap)
    return snap


def heldout(data_dir: Path, work: Path, quick: bool) -> tuple[Path, list]:
    """Held-out tasks as pre-training text (for loss) and the checkable records (for accuracy)."""
    from duomind.tasks.formats import corpus_text
    from duomind.tasks.io import read_tasks

    tasks = read_tasks(data_dir / "heldout.jsonl")
    text = work / "heldout.txt"
    if not text.is_file():
        text.write_text(corpus_text(tasks, seed=0))
    checkable = [t for t in tasks if t.task != "code"][: 8 if quick else 16]
    return text, checkable


def eval_windows(tokenizer, text: Path, n: int, seq_len: int):
    import torch

    from duomind.train.data import build_examples, read_records

    windows = build_examples(tokenizer, read_records(text), "pretrain", seq_len).inputs[:n]
    return torch.tensor(windows)


def heldout_loss(model, windows, micro: int = 8) -> float:
    import torch

    from duomind.prune.importance import _loss

    with torch.no_grad():
        return _loss(model, windows, micro)


def window_losses(model, windows) -> list[float]:
    """Mean next-token loss of each held-out window: the methods see the same windows, so their
    differences can be paired window by window (a standard error on the difference, not on each loss)."""
    import torch

    from duomind.prune.importance import _loss

    with torch.no_grad():
        return [_loss(model, windows[i:i + 1], 1) for i in range(len(windows))]


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of b - a over paired windows and its standard error."""
    d = [y - x for x, y in zip(a, b)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return {"mean": statistics.fmean(d), "se": se, "windows": len(d)}


def accuracy(model, tokenizer, tasks) -> float:
    from duomind.generate import generate
    from duomind.tasks import check_answer

    newline = tokenizer.encode("\n", add_special_tokens=False)
    correct = 0
    for t in tasks:
        prompt = tokenizer.encode(f"Q: {t.prompt}\nA:", add_special_tokens=False)
        out = generate(model, [prompt], max_new_tokens=16, stop_tokens=newline + [tokenizer.eos_token_id])[0]
        correct += check_answer(t, tokenizer.decode(out).split("\n")[0].strip())
    return correct / max(len(tasks), 1)


def norm_scale(model, importance, batches, target: float) -> dict:
    """What SLNP does to each pre-norm gain vs what would restore the kept channels' outputs.

    After hidden pruning an RMSNorm divides by the RMS of the kept channels only; they are the large ones, so
    every kept output shrinks by rms(x) / rms(x_kept). The factor that undoes it, mean over calibration tokens
    of rms(x_kept) / rms(x) (measured on the unpruned model), is set beside SLNP's ||gain|| / ||gain_kept||.
    """
    import torch

    from duomind.prune.pipeline import plan
    from duomind.prune.plan import Targets
    from duomind.prune.select import choose

    cfg = model.model_config
    keep = torch.tensor(choose(cfg, plan(cfg, "pangu-light", Targets(target_params=target)), importance,
                               clap=True).hidden)
    norms = {f"layers.{i}.{n}": getattr(layer, n) for i, layer in enumerate(model.layers)
             for n in ("attn_norm", "mlp_norm")} | {"norm": model.norm}
    ratios: dict[str, list] = {name: [] for name in norms}

    def hook(name):
        def record(module, args):
            x = args[0].double().flatten(0, -2)
            ratios[name].append((x[:, keep].pow(2).mean(-1) / x.pow(2).mean(-1)).sqrt())
        return record

    handles = [norm.register_forward_pre_hook(hook(name)) for name, norm in norms.items()]
    try:
        with torch.no_grad():
            model(batches)
    finally:
        for h in handles:
            h.remove()
    gains = {name: norm.weight.detach().float() for name, norm in norms.items()}
    rows = {name: {"slnp": float(g.norm() / g[keep].norm()), "restoring": float(torch.cat(ratios[name]).mean())}
            for name, g in gains.items()}
    return {"hidden_kept": len(keep), "hidden": cfg.hidden_size, "per_norm": rows,
            "slnp_mean": statistics.fmean(r["slnp"] for r in rows.values()),
            "restoring_mean": statistics.fmean(r["restoring"] for r in rows.values())}


def decode_speed(original, pruned, prompt: list[int], tokens: int, rounds: int) -> dict:
    """Seconds per token of both models, alternating who goes first each round; medians and the ratio."""
    from duomind.generate import generate

    for m in (original, pruned):
        generate(m, [prompt], max_new_tokens=4)
    times = {"original": [], "pruned": []}
    for r in range(rounds):
        order = [("original", original), ("pruned", pruned)][:: 1 if r % 2 == 0 else -1]
        for name, m in order:
            t0 = time.perf_counter()
            generate(m, [prompt], max_new_tokens=tokens)
            times[name].append((time.perf_counter() - t0) / tokens)
    o, p = statistics.median(times["original"]), statistics.median(times["pruned"])
    return {"original_tokens_per_s": 1 / o, "pruned_tokens_per_s": 1 / p, "speedup": o / p,
            "original": _common.stats(times["original"]), "pruned": _common.stats(times["pruned"])}


def run_model(name: str, src: Path, work: Path, args, recover_only: bool) -> dict:
    """Prune `src` with every method (cached), recover each (cached), then evaluate and time."""
    from duomind.prune.calibration import calibration_batches
    from duomind.prune.importance import measure
    from duomind.prune.pipeline import METHODS, plan, prune_model, recover
    from duomind.prune.plan import Targets
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, seal

    tokenizer = load_tokenizer(src)
    teacher = load_model(src)
    cfg = teacher.model_config
    data_dir = _common.CACHE / ("bench-base-quick" if args.quick else "bench-base") / "data"
    text, tasks = heldout(data_dir, work, args.quick)
    seq = 64 if args.quick else 256

    @functools.cache
    def calibration() -> tuple:  # measured once per process, and only when pruning or norm_scale needs it
        batches = calibration_batches(tokenizer, None, args.calibration_samples, seq)
        return batches, measure(teacher, batches, loss_delta=True)

    rows: dict[str, dict] = {}
    for method in args.methods:
        pruned_dir, kd_dir = work / name / method / "pruned", work / name / method / "kd"
        if not (pruned_dir / "COMPLETE").is_file():
            batches, importance = calibration()
            model, info = prune_model(teacher, method, plan(cfg, method, Targets(target_params=args.target)), batches,
                                      importance=importance)
            model.save_pretrained(pruned_dir)
            tokenizer.save_pretrained(pruned_dir)
            (pruned_dir / "prune.json").write_text(json.dumps(info | {"source": str(src)}, indent=1))
            seal(pruned_dir, {"pruned_from": str(src)})
    for method in args.methods:  # all pruned first: an interrupted run resumes without re-measuring importance
        pruned_dir, kd_dir = work / name / method / "pruned", work / name / method / "kd"
        final = kd_dir / f"step-{args.steps:06d}"
        if not (final / "COMPLETE").is_file():  # a finished run is reused, not reloaded through the trainer
            print(f"[{name}] {method}: recovering ({args.steps} KD steps)", flush=True)
            final = recover(pruned_dir, kd_dir, work / "corpus.txt", teacher=src, steps=args.steps, lr=args.lr,
                            min_lr=args.lr / 10, warmup_steps=max(args.steps // 8, 1), seq_len=seq,
                            global_batch_size=args.batch, micro_batch_size=args.batch, eval_data=str(text),
                            eval_every=max(args.steps // 4, 1), eval_batches=args.eval_windows // args.batch,
                            log_every=max(args.steps // 8, 1), save_every=max(args.steps // 2, 1), threads=args.threads,
                            progress=False)
        rows[method] = {"pruned": pruned_dir, "recovered": final, "kd": kd_dir,
                        "info": json.loads((pruned_dir / "prune.json").read_text()), "method": METHODS[method]}
    if recover_only:
        return {}
    cached = work / name / "results.json"
    if cached.is_file() and not args.fresh_eval:
        return json.loads(cached.read_text())
    windows = eval_windows(tokenizer, text, args.eval_windows, seq)
    base_loss, base_acc = heldout_loss(teacher, windows), accuracy(teacher, tokenizer, tasks)
    print(f"[{name}] original: loss {base_loss:.3f}  accuracy {base_acc:.1%}", flush=True)
    prompt = tokenizer.encode(f"Q: {tasks[0].prompt}\nA:", add_special_tokens=False)
    snapshot = src / "snapshot.json"
    out = {"source": str(src), "snapshot": json.loads(snapshot.read_text()) if snapshot.is_file() else None,
           "original": {"heldout_loss": base_loss, "accuracy": base_acc, "parameters": cfg.num_parameters(),
                        "shape": _shape(cfg)}, "methods": {}}
    batches, importance = calibration()
    out["norm_scale"] = norm_scale(teacher, importance, batches, args.target)
    print(f"[{name}] SLNP scales the pre-norm gains by {out['norm_scale']['slnp_mean']:.3f} (mean); restoring the "
          f"kept channels' outputs takes {out['norm_scale']['restoring_mean']:.3f}", flush=True)
    for method, row in rows.items():
        before, after = load_model(row["pruned"]), load_model(row["recovered"])
        curve = [(0, None)] + [(r["step"], r["eval_loss"]) for r in _metrics(row["kd"]) if "eval_loss" in r]
        loss0 = heldout_loss(before, windows)
        curve[0] = (0, loss0)
        res = {"parameters": after.model_config.num_parameters(),
               "param_fraction": after.model_config.num_parameters() / cfg.num_parameters(),
               "shape": _shape(after.model_config), "kept_layers": row["info"]["kept_layers"],
               "clap_moved": row["info"]["clap_moved"], "reinit": {k: row["info"][k] for k in ("clap", "slnp", "absorb")},
               "loss_after_pruning": loss0, "accuracy_after_pruning": accuracy(before, tokenizer, tasks),
               "loss_after_recovery": heldout_loss(after, windows), "window_losses": window_losses(after, windows),
               "accuracy_after_recovery":
               accuracy(after, tokenizer, tasks), "recovery_curve": curve,
               "decode": decode_speed(teacher, after, prompt, args.decode_tokens, args.rounds)}
        out["methods"][method] = res
        print(f"[{name}] {method:14s} params {res['param_fraction']:.1%}  loss {loss0:.3f} -> "
              f"{res['loss_after_recovery']:.3f}  acc {res['accuracy_after_pruning']:.1%} -> "
              f"{res['accuracy_after_recovery']:.1%}  decode x{res['decode']['speedup']:.2f}", flush=True)
    import torch

    out["measured_with"] = {"torch_threads": torch.get_num_threads(), "lock": args.lock}
    cached.write_text(json.dumps(out, indent=1, default=str))
    return out


def _shape(cfg) -> dict:
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "norm_style": cfg.norm_style}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["all", "recover", "evaluate"], default="all",
                   help="recover: prune and recover (the training part); evaluate: also measure and time each model "
                        "(cached per model); all: also write the results")
    p.add_argument("--lock", default="none", help="which lane this run holds (recorded with the timings)")
    p.add_argument("--fresh_eval", action="store_true", help="re-measure models whose results are cached")
    p.add_argument("--target", type=float, default=0.5, help="parameter budget (fraction of the model)")
    p.add_argument("--steps", type=int, default=100, help="KD recovery steps, the same for every method")
    p.add_argument("--batch", type=int, default=8, help="sequences per KD step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--calibration_samples", type=int, default=8)
    p.add_argument("--eval_windows", type=int, default=128, help="held-out windows for loss (and the curves)")
    p.add_argument("--decode_tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=None,
                   help="cache of pruned and recovered models (default: .duomind_cache/prune-bench-<budget>, one per "
                        "target, steps, batch and lr)")
    p.add_argument("--models", default="pre,dssn", help="comma list of pre (bench-base) and dssn (its DSSN variant)")
    p.add_argument("--methods", default=",".join(METHOD_ORDER),
                   help="comma list of methods to prune and recover (--stage recover only: run disjoint lists in "
                        "parallel processes, one thread each; evaluation needs all of them)")
    args = p.parse_args()
    chosen = {m for m in args.methods.split(",") if m}
    if chosen - set(METHOD_ORDER):
        p.error(f"unknown method(s) {sorted(chosen - set(METHOD_ORDER))}; choose from {METHOD_ORDER}")
    args.methods = [m for m in METHOD_ORDER if m in chosen]
    if args.stage != "recover" and args.methods != METHOD_ORDER:
        p.error("--methods selects a subset for --stage recover only; evaluation compares all five methods")
    if args.quick:
        args.steps, args.batch, args.calibration_samples, args.eval_windows = 2, 4, 4, 4
        args.decode_tokens, args.rounds, args.target = 8, 2, 0.7  # the tiny model is mostly embeddings
    out = _common.out_dir(args)
    budget = f"t{args.target}-{args.steps}x{args.batch}-lr{args.lr}"
    work = Path(args.work) if args.work else out / "work" if args.quick else _common.CACHE / f"prune-bench-{budget}"
    work.mkdir(parents=True, exist_ok=True)
    sources = {"pre": lambda: pre_model(args.quick, work), "dssn": lambda: dssn_model(args.quick)}
    corpus = work / "corpus.txt"
    if not corpus.is_file():  # the recovery data: the first 4,000 documents of bench-base's pre-training corpus
        src = _common.CACHE / ("bench-base-quick" if args.quick else "bench-base") / "data" / "corpus.txt"
        if args.quick:
            sources["pre"]()
        corpus.write_text("\n\n".join(src.read_text().split("\n\n")[:4000]) + "\n")
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, sources[name](), work, args, args.stage == "recover")
    if args.stage != "all":
        return
    pre = results.get("pre") or next(iter(results.values()))
    methods = pre["methods"]
    result = {
        "setup": {"target_params": args.target, "recovery_steps": args.steps, "recovery_batch": args.batch,
                  "recovery_seq_len": 64 if args.quick else 256, "recovery_lr": args.lr,
                  "recovery_data": "first 4,000 documents of the bench-base pre-training corpus (KD, forward KL on "
                                   "every token)",
                  "calibration": f"{args.calibration_samples} windows of the synthetic task corpus",
                  "heldout": f"{args.eval_windows} windows of held-out task text; accuracy on held-out non-code tasks",
                  "dssn_variant": f"bench-base recipe with norm_style dssn, the first {DSSN_STEPS} steps of a {DSSN_SCHEDULE}-step "
                                  "schedule (bench-base: 600 steps)",
                  "decode": f"duomind.generate, batch 1, {args.decode_tokens} new tokens, {args.rounds} alternating rounds"},
        "models": results,
        "loss_after_recovery": {m: r["loss_after_recovery"] for m, r in methods.items()},
        "loss_after_pruning": {m: r["loss_after_pruning"] for m, r in methods.items()},
        "accuracy_after_recovery": {m: r["accuracy_after_recovery"] for m, r in methods.items()},
        "speedup_decode": {m: r["decode"]["speedup"] for m, r in methods.items()},
        "param_fraction": {m: r["param_fraction"] for m, r in methods.items()},
    }
    # SLNP's gain factor beside the one that restores the kept channels' outputs (see norm_scale)
    result["norm_scale"] = {name: {k: r["norm_scale"][k] for k in ("slnp_mean", "restoring_mean")}
                            for name, r in results.items() if "norm_scale" in r}
    pl = methods["pangu-light"]["loss_after_recovery"]
    result["pangu_light_beats_minitron_and_shortgpt"] = (pl < methods["minitron"]["loss_after_recovery"]
                                                         and pl < methods["shortgpt"]["loss_after_recovery"])
    # > 0: pangu-light's held-out loss is lower than that method's, in standard errors of the paired difference
    result["pangu_light_margin"] = {m: paired(methods["pangu-light"]["window_losses"], r["window_losses"])
                                    for m, r in methods.items() if m != "pangu-light"}
    result["min_speedup_decode"] = min(result["speedup_decode"].values())
    result["speedup_decode_pangu_light"] = methods["pangu-light"]["decode"]["speedup"]
    if "dssn" in results and "pre" in results:
        d = results["dssn"]["methods"]
        result["dssn_loss_after_recovery"] = {m: r["loss_after_recovery"] for m, r in d.items()}
        result["dssn_speedup_decode"] = {m: r["decode"]["speedup"] for m, r in d.items()}
        result["dssn_pangu_light_margin"] = {m: paired(d["pangu-light"]["window_losses"], r["window_losses"])
                                             for m, r in d.items() if m != "pangu-light"}
        result["dssn_pangu_light_beats_minitron_and_shortgpt"] = (
            d["pangu-light"]["loss_after_recovery"] < min(d["minitron"]["loss_after_recovery"],
                                                          d["shortgpt"]["loss_after_recovery"]))
    _common.write("prune", result, out)
    plot(results, out / "prune.png")


def plot(results: dict, path: Path) -> None:
    plt = _common.figure()
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(5 * (len(results) + 1), 4), dpi=120)
    for ax, (name, res) in zip(axes, results.items()):
        for method, r in res["methods"].items():
            steps, losses = zip(*r["recovery_curve"])
            ax.plot(steps, losses, marker="o", ms=3, label=method)
        ax.axhline(res["original"]["heldout_loss"], color="k", ls="--", lw=0.8, label="unpruned")
        ax.set(title=f"KD recovery at 50% parameters ({name})", xlabel="KD step", ylabel="held-out loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    names = list(next(iter(results.values()))["methods"])
    width = 0.8 / len(results)
    for k, (name, res) in enumerate(results.items()):
        ax.bar([i + k * width for i in range(len(names))], [res["methods"][m]["decode"]["speedup"] for m in names],
               width, label=name)
    ax.axhline(1.6, color="r", ls="--", lw=0.8, label="goal 1.6x")
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))], names, rotation=20, fontsize=7)
    ax.set(title="decode tokens/s, pruned / original (batch 1)", ylabel="speedup")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
