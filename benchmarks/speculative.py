"""Speculative decoding: FIRP vs Medusa-style heads, prompt lookup, a draft model and HF assisted generation.

On the shared bench-base model (batch 1, greedy, float32) over two prompt sets: math word problems from the
task generator (`Q: ...\\nWork:`, the model writes the worked steps) and free text (code and sequence
prompts). Every method must reproduce plain greedy decoding token for token (`lossless`). Contenders run
interleaved, rotating who goes first each round, so machine noise hits all alike. FIRP's layer l and draft
length k are swept on the math prompts.

Predictors (FIRP for each swept l, Medusa heads) and the draft model are trained once and cached in
.duomind_cache/ (train them under the train lock: `python benchmarks/speculative.py --train_only`; the
default 1,600 predictor steps took 38 min on two threads, the benchmark itself about 13 min on one).

    python benchmarks/speculative.py --threads 1        # full: benchmarks/results/speculative.{json,png}
    python benchmarks/speculative.py --quick --threads 1
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import _common

LAYERS = (6, 9, 11)  # FIRP layers swept (of 12); quick mode uses layer 1 of the 2-layer tiny model
K_MAX = 4


def draft_model(quick: bool = False):
    """A small model (preset demo, 4 x 128) pre-trained on the bench-base corpus with its tokenizer."""
    from duomind.config import TrainConfig, from_dict, load_mapping
    from duomind.train.loop import train

    root = _common.CACHE / ("bench-base-quick" if quick else "bench-base")
    if quick or not (root / "tokenizer" / "tokenizer.json").is_file():
        _common.base_model(quick)  # makes the corpus and tokenizer (and the base model)
    recipe = load_mapping(Path(__file__).resolve().parent.parent / "recipes" / "bench-base.yaml")
    out = _common.CACHE / ("bench-draft-quick" if quick else "bench-draft")
    recipe.update(out_dir=str(out / "run"), data=str(root / "data" / "corpus.txt"), tokenizer=str(root / "tokenizer"),
                  model_preset="demo", model={"max_position_embeddings": 1024}, max_steps=400, lr=0.003,
                  save_every=100, threads=1, progress=True)
    if quick:
        recipe.update(model_preset="tiny", model={}, max_steps=4, seq_len=64, global_batch_size=4,
                      micro_batch_size=4, save_every=4, progress=False)
    return train(from_dict(TrainConfig, recipe, "speculative draft model"))


def predictors(base, tok, quick: bool = False, steps: int = 150, batch: int = 8) -> dict:
    """{name: directory} of FIRP predictors (one per swept layer, k = K_MAX) and Medusa heads, cached."""
    import torch

    from duomind.generate.predictors import build, fingerprint, save_predictors
    from duomind.generate.spec_train import hit_rates, token_windows, train_predictors

    layers = (1,) if quick else LAYERS
    steps = 4 if quick else steps
    root = _common.CACHE / f"bench-spec-{fingerprint(base)}-{steps}x{batch}"
    names = {f"firp-l{layer}": ("firp", layer) for layer in layers} | {"medusa": ("medusa", None)}
    dirs = {name: root / name for name in names}
    if all((d / "drafter.json").is_file() for d in dirs.values()):
        return dirs
    data = _common.CACHE / ("bench-base-quick" if quick else "bench-base") / "data" / "corpus.txt"
    windows = token_windows(tok, str(data), 64 if quick else 128)
    held, train = windows[:32], windows[32:]
    modules = {name: build(base, kind, K_MAX, layer) for name, (kind, layer) in names.items()}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    last = train_predictors(base, list(modules.values()), train, steps=steps, batch_size=batch, sources=16,
                            progress=not quick)
    seconds = time.perf_counter() - t0
    for (name, module), terms in zip(modules.items(), last):
        hit = hit_rates(base, module, held[:8] if quick else held)
        save_predictors(module, base, dirs[name], {"hit": hit, "final_loss": terms, "train_seconds_all": seconds})
        print(f"{name}: loss {terms}  top-1 hit per position {[round(h[0], 3) for h in hit]}")
    return dirs


def prompt_sets(tok, n: int) -> dict[str, list[list[int]]]:
    from duomind.tasks import generate

    math = [f"Q: {t.prompt}\nWork:" for t in generate("word", n=n, seed=1234)]
    text = [f"Q: {t.prompt}\nA:" for t in generate(["code", "sequence"], n=n, seed=1234)]
    return {"math": [tok.encode(p) for p in math], "text": [tok.encode(p) for p in text]}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=6, help="prompts per set")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep_prompts", type=int, default=None, help="math prompts per l/k sweep point (default: --prompts)")
    p.add_argument("--train_only", action="store_true", help="build the draft model and predictors, then stop")
    p.add_argument("--predictor_steps", type=int, default=1600, help="training steps of the FIRP / Medusa predictors")
    p.add_argument("--predictor_batch", type=int, default=8, help="windows per predictor training step")
    p.add_argument("--checkpoint", default=None,
                   help="benchmark this checkpoint instead of bench-base's final one (e.g. an earlier step)")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 2, 12, 1
    out = _common.out_dir(args)

    import torch

    from duomind.generate import generate
    from duomind.generate.drafters import DraftModel, PromptLookup, predictor_drafter
    from duomind.generate.speculative import Stats, speculative_generate
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model

    load_before = os.getloadavg()
    ckpt = args.checkpoint or _common.base_model(args.quick)
    base, tok = load_model(ckpt), load_tokenizer(ckpt)
    draft = load_model(draft_model(args.quick))
    dirs = predictors(base, tok, args.quick, args.predictor_steps, args.predictor_batch)
    if args.train_only:
        return
    layers = (1,) if args.quick else LAYERS
    sets = prompt_sets(tok, args.prompts)
    n = args.new_tokens
    stop: list[int] = []  # a fixed n tokens each: past the end of text the model starts a new problem

    def spec(make):
        def run(prompts, stats=None):
            return [speculative_generate(base, p, make(), max_new_tokens=n, stop_tokens=stop, stats=stats)
                    for p in prompts]
        return run

    def hf(assistant=None):
        def run(prompts, stats=None):
            outs = []
            with torch.inference_mode():
                for p in prompts:
                    x = torch.tensor([p])
                    kw = {"assistant_model": assistant} if assistant is not None else {}
                    y = base.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                      eos_token_id=stop, pad_token_id=0, **kw)
                    outs.append(y[0, len(p):].tolist())
            return outs
        return run

    def plain(prompts, stats=None):
        return [generate(base, [p], max_new_tokens=n, stop_tokens=stop)[0] for p in prompts]

    lossless = True

    # FIRP sweep over l and k (chain), math prompts; each point timed against plain decoding, alternating
    sweep = {}
    prompts = sets["math"][: args.sweep_prompts or len(sets["math"])]
    sweep_prompts = len(prompts)
    reference = plain(prompts)
    for i, (layer, k) in enumerate((layer, k) for layer in layers for k in range(1, K_MAX + 1)):
        st = Stats()
        run = spec(lambda layer=layer, k=k: predictor_drafter(base, dirs[f"firp-l{layer}"], k=k))
        lossless &= run(prompts, st) == reference
        t = {"plain": 0.0, "firp": 0.0}
        for name in ("plain", "firp", "firp", "plain") if i % 2 == 0 else ("firp", "plain", "plain", "firp"):
            t0 = time.perf_counter()
            (plain if name == "plain" else run)(prompts)
            t[name] += time.perf_counter() - t0
        sweep[f"l{layer}_k{k}"] = {"layer": layer, "k": k, "speedup": t["plain"] / t["firp"],
                                   "mean_accepted_length": st.mean_accepted_length,
                                   "acceptance_per_position": st.acceptance_per_position}
        print(f"sweep l={layer:2d} k={k}: {t['plain'] / t['firp']:.2f}x  accepted {st.mean_accepted_length:.2f}")
    # the layer with the best mean speedup over k, and its best k, go into the comparison
    best_layer = max(layers, key=lambda la: sum(v["speedup"] for v in sweep.values() if v["layer"] == la))
    best_k = max((v for v in sweep.values() if v["layer"] == best_layer), key=lambda v: v["speedup"])["k"]

    firp_dir = dirs[f"firp-l{best_layer}"]
    methods = {
        "plain": plain,
        "firp_chain": spec(lambda: predictor_drafter(base, firp_dir, k=best_k)),
        "firp_tree": spec(lambda: predictor_drafter(base, firp_dir, k=K_MAX, width=3, budget=10)),
        "medusa_tree": spec(lambda: predictor_drafter(base, dirs["medusa"], k=K_MAX, width=3, budget=10)),
        "prompt_lookup": spec(lambda: PromptLookup(k=K_MAX)),
        "draft_model": spec(lambda: DraftModel(draft, k=K_MAX)),
        "hf": hf(),
        "hf_assisted": hf(draft),
    }
    results: dict = {}
    for set_name, prompts in sets.items():
        reference = plain(prompts)
        tokens = sum(len(o) for o in reference)
        stats, rows = {}, {}
        for name, run in methods.items():
            st = Stats()
            got = run(prompts, st)
            equal = got == reference
            lossless &= equal
            stats[name] = st
            rows[name] = {"equal_to_plain": equal}
            if st.steps:
                rows[name] |= {"mean_accepted_length": st.mean_accepted_length,
                               "acceptance_per_position": st.acceptance_per_position}
        times = {name: [] for name in methods}
        names = list(methods)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                t0 = time.perf_counter()
                methods[name](prompts)
                times[name].append(time.perf_counter() - t0)
        plain_tps = tokens / _common.stats(times["plain"])["median"]
        for name in methods:
            s = _common.stats(times[name])
            rows[name] |= {"tokens_per_s": tokens / s["median"], "seconds": s}
            rows[name]["speedup"] = rows[name]["tokens_per_s"] / plain_tps
            acc = rows[name].get("mean_accepted_length")
            if acc is not None:  # what one verify step costs, in plain decode steps
                rows[name]["step_cost_in_plain_steps"] = acc / rows[name]["speedup"]
            print(f"{set_name:4s} {name:14s} {rows[name]['tokens_per_s']:7.1f} tok/s  {rows[name]['speedup']:5.2f}x  "
                  f"accepted {acc if acc is None else round(acc, 2)}  equal {rows[name]['equal_to_plain']}")
        results[set_name] = rows

    firp_best = {s: max(results[s]["firp_chain"]["speedup"], results[s]["firp_tree"]["speedup"]) for s in results}
    firp_math_tps = max(results["math"]["firp_chain"]["tokens_per_s"], results["math"]["firp_tree"]["tokens_per_s"])
    result = {
        "setup": {"model": str(ckpt), "predictor_training": {"steps": args.predictor_steps,
                                                             "batch": args.predictor_batch, "seq_len": 128}, "params_m": round(sum(p.numel() for p in base.parameters()) / 1e6, 2),
                  "draft_params_m": round(sum(p.numel() for p in draft.parameters()) / 1e6, 2),
                  "prompts_per_set": args.prompts, "sweep_prompts": sweep_prompts, "new_tokens": n, "repeats": args.repeats, "batch": 1,
                  "greedy": True, "dtype": "float32", "firp_layer": best_layer, "firp_chain_k": best_k,
                  "k": K_MAX, "stop": "none: n tokens per prompt",
                  "tree": {"width": 3, "budget": 10},
                  "load_average_before_after": [load_before, os.getloadavg()]},
        "runs": results,
        "sweep": sweep,
        "firp_speedup": firp_best,
        "lossless": lossless,
        "speedup_vs_hf_assisted": firp_math_tps / results["math"]["hf_assisted"]["tokens_per_s"],
        "firp_ahead_of_medusa_and_lookup_math": firp_best["math"] > max(results["math"]["medusa_tree"]["speedup"],
                                                                       results["math"]["prompt_lookup"]["speedup"]),
        "goal": "firp_speedup.math >= 2.0, lossless, FIRP ahead of Medusa heads / prompt lookup / HF assisted",
    }
    result["firp_speedup_math"], result["firp_speedup_text"] = firp_best["math"], firp_best["text"]
    _common.write("speculative", result, out)

    plot(result, out / "speculative.png")


def plot(result: dict, path: Path) -> None:
    """Left: speedup per method and prompt set; right: the FIRP sweep over l and k (from the result alone)."""
    plt = _common.figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=120)
    runs = result["runs"]
    names = list(next(iter(runs.values())))
    for i, set_name in enumerate(runs):
        ax1.bar([x + 0.4 * i for x in range(len(names))], [runs[set_name][m]["speedup"] for m in names],
                width=0.4, label=set_name)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.axhline(2.0, color="r", lw=0.8, ls="--", label="goal (math)")
    ax1.set_xticks([x + 0.2 for x in range(len(names))], names, rotation=30, fontsize=7)
    ax1.set_ylabel("speedup over plain decoding (tokens/s)")
    ax1.set_title(f"batch 1, greedy, {Path(result['setup']['model']).name} (CPU, 1 thread)", fontsize=9)
    ax1.legend(fontsize=7)
    sweep = result["sweep"].values()
    for layer in sorted({v["layer"] for v in sweep}):
        points = [v for v in sweep if v["layer"] == layer]
        ax2.plot([v["k"] for v in points], [v["speedup"] for v in points], marker="o", label=f"l = {layer}")
    ax2.set_xticks(sorted({v["k"] for v in sweep}))
    ax2.set_xlabel("draft length k (chain)")
    ax2.set_ylabel("FIRP speedup, math prompts")
    ax2.set_title("FIRP sweep over layer l and k", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
