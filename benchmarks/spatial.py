"""SpatialLLM (arXiv 2505.12703): description speed, answerability within a budget, and a small fine-tuned model.

1. describe_seconds: building the SSD of synthetic cities of 1,000 / 10,000 / 100,000 features (goal:
   100,000 in <= 10 s on 2 cores); the city is generated before the clock starts.
2. answerable_fraction: share of generated perception questions whose exact answer the rule-based reader
   recovers from the description rendered within the default budget (goal >= 0.95); also per budget.
3. accuracy_by_category: a small DuoMind model fine-tuned on description -> answer pairs from training
   cities, asked about a held-out city with and without the description (one model, trained on both
   forms, so the difference is what the description supplies).

    python benchmarks/spatial.py --threads 1          # full (a few minutes of training)
    python benchmarks/spatial.py --quick --threads 1  # seconds, writes to a temp dir
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import _common

DEFAULT_BUDGET = 2000


def describe_speed(sizes: list[int], repeats: dict[int, int]) -> dict:
    from duomind.apps.spatial.city import city_for_features
    from duomind.apps.spatial.ssd import describe

    out = {}
    for n in sizes:
        city = city_for_features(n, seed=0, cloud_points_per_building=20)
        times = _common.timed(lambda c=city: describe(c.scene), repeats=repeats.get(n, 1), warmup=0)
        out[str(n)] = {"features": len(city.scene), "cloud_points": int(len(city.scene.cloud)),
                       **_common.stats(times)}
        print(f"describe {len(city.scene):>7} features ({len(city.scene.cloud)} cloud points): "
              f"median {out[str(n)]['median']:.2f} s")
    # the stages run side by side in threads where cores are free (GEOS releases the GIL)
    big = city_for_features(sizes[-1], seed=0, cloud_points_per_building=20)
    out["largest_workers_2"] = _common.stats(_common.timed(lambda: describe(big.scene, workers=2), repeats=2, warmup=0))
    print(f"describe {len(big.scene):>7} features, 2 threads: median {out['largest_workers_2']['median']:.2f} s")
    return out


def answerability(blocks: int, per_category: int, budgets: list[int]) -> dict:
    from duomind.apps.spatial import questions as Q
    from duomind.apps.spatial.city import make_city
    from duomind.apps.spatial.render import render
    from duomind.apps.spatial.ssd import describe

    ssd = describe(make_city(blocks, blocks, seed=0).scene)
    qs = Q.generate(ssd, per_category=per_category, seed=0)
    by_budget = {}
    for b in budgets:
        ok = [Q.rule_answer(q, render(ssd, budget=b, question=q.prompt(), entities=q.entities).text) == q.answer
              for q in qs]
        by_cat: dict[str, list[bool]] = {}
        for q, o in zip(qs, ok):
            by_cat.setdefault(q.category, []).append(o)
        by_budget[str(b)] = {"fraction": sum(ok) / len(ok), "by_category": {k: sum(v) / len(v) for k, v in by_cat.items()}}
        print(f"budget {b:>5}: answerable {by_budget[str(b)]['fraction']:.3f}")
    feats = len(ssd["polygons"]) + len(ssd["lines"]) + len(ssd["points"])
    full = render(ssd, budget=10**7)
    return {"features": feats, "questions": len(qs), "full_description_tokens": full.tokens, "by_budget": by_budget}


def _records(ssd, qs, tok, budget, with_desc: bool):
    from duomind.apps.spatial.render import render

    def count(t: str) -> int:
        return len(tok.encode(t, add_special_tokens=False))

    recs = []
    for q in qs:
        if with_desc:
            # the description gets what the question leaves of the model's window (chat markup: ~16 tokens)
            room = budget - count(f"SCENE:\nQUESTION: {q.prompt()}") - 16
            ctx = render(ssd, budget=max(room, 32), question=q.prompt(), entities=q.entities, stats=False,
                         count=count).text
            prompt = f"SCENE:\n{ctx}\nQUESTION: {q.prompt()}"
        else:
            prompt = f"QUESTION: {q.prompt()}"
        recs.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": q.answer}]})
    return recs


def finetune(work: Path, train_cities: int, blocks: int, per_category: int, test_per_category: int, steps: int,
             preset: str, budget: int, seq_len: int, batch: int, threads: int | None) -> dict:
    """Fine-tune a small model on description -> answer pairs (with and without the description)."""
    import torch

    from duomind.apps.spatial import questions as Q
    from duomind.apps.spatial.city import make_city
    from duomind.apps.spatial.ssd import describe
    from duomind.config import TrainConfig
    from duomind.generate import generate
    from duomind.generate.cli import stop_ids
    from duomind.tokenizer import chat_prompt, load_tokenizer, train_tokenizer
    from duomind.train.checkpoint import load_model
    from duomind.train.loop import train

    t0 = time.perf_counter()
    cities = [describe(make_city(blocks, blocks, seed=s).scene) for s in range(1, train_cities + 1)]
    test_ssd = describe(make_city(blocks, blocks, seed=1000).scene)
    train_qs = [(ssd, Q.generate(ssd, per_category=per_category, seed=s)) for s, ssd in enumerate(cities)]
    test_qs = Q.generate(test_ssd, per_category=test_per_category, seed=7)
    from duomind.apps.spatial.render import render

    corpus = [render(ssd, budget=10**6).text for ssd in cities[:4]] + [q.prompt() for _, qs in train_qs for q in qs]
    tok = train_tokenizer(corpus, vocab_size=512)
    tok_dir = work / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    recs = []
    for ssd, qs in train_qs:
        recs += _records(ssd, qs, tok, budget, True) + _records(ssd, qs, tok, budget, False)
    # a record whose prompt leaves no room for the answer would teach nothing (SFT truncates the end)
    fits = [r for r in recs if len(chat_prompt(tok, r["messages"][:1])) <= seq_len - 4]
    dropped = len(recs) - len(fits)
    recs = fits
    random.Random(0).shuffle(recs)
    data = work / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    lengths = [len(chat_prompt(tok, r["messages"][:1])) for r in recs]
    prep_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ckpt = train(TrainConfig(out_dir=str(work / "sft"), mode="sft", data=str(data), tokenizer=str(tok_dir),
                             model_preset=preset, model={"max_position_embeddings": seq_len + 16},
                             seq_len=seq_len, global_batch_size=batch, micro_batch_size=batch, max_steps=steps,
                             lr=3e-3, min_lr=3e-4, warmup_steps=max(1, steps // 20), weight_decay=0.0,
                             save_every=10**6, log_every=max(1, steps // 10), threads=threads, progress=False))
    train_s = time.perf_counter() - t1
    model = load_model(ckpt)
    n_params = sum(p.numel() for p in model.parameters())
    results = {}
    for cond, with_desc in (("with_description", True), ("without_description", False)):
        recs_t = _records(test_ssd, test_qs, tok, budget, with_desc)
        prompts = [chat_prompt(tok, r["messages"][:1])[-seq_len:] for r in recs_t]
        replies = []
        with torch.inference_mode():
            for i in range(0, len(prompts), 16):
                new = generate(model, prompts[i:i + 16], max_new_tokens=3, stop_tokens=stop_ids(tok))
                replies += [tok.decode(t, skip_special_tokens=True) for t in new]
        results[cond] = Q.score(test_qs, [Q.parse_choice(r) for r in replies])
        print(f"fine-tuned model {cond}: {results[cond]['accuracy']:.3f} {results[cond]['accuracy_by_category']}")
    rule = Q.score(test_qs, [Q.rule_answer(q, r["messages"][0]["content"]) for q, r in
                             zip(test_qs, _records(test_ssd, test_qs, tok, budget, True))])
    return {"with_description": results["with_description"], "without_description": results["without_description"],
            "rule_reader_same_prompts": rule,
            "setup": {"preset": preset, "parameters": n_params, "steps": steps, "batch": batch, "seq_len": seq_len,
                      "prompt_budget_tokens": budget, "train_cities": train_cities, "city_blocks": blocks,
                      "train_records": len(recs), "train_records_dropped_too_long": dropped, "test_questions": len(test_qs),
                      "prompt_tokens_median": sorted(lengths)[len(lengths) // 2], "prompt_tokens_max": max(lengths),
                      "chance": 0.25, "prep_seconds": round(prep_s, 1), "train_seconds": round(train_s, 1)}}


def plot(result: dict, path: Path) -> None:
    plt = _common.figure()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    sp = result["describe_seconds"]
    keys = [k for k in sp if k.isdigit()]
    xs = [sp[k]["features"] for k in keys]
    axes[0].loglog(xs, [sp[k]["median"] for k in keys], "o-", label="1 thread")
    axes[0].plot([xs[-1]], [sp["largest_workers_2"]["median"]], "s", label="2 threads")
    axes[0].axhline(10, color="r", ls="--", lw=0.8, label="goal at 100k: 10 s")
    axes[0].set(xlabel="features", ylabel="seconds", title="describe time")
    axes[0].legend()
    bb = result["answerability"]["by_budget"]
    axes[1].plot([int(b) for b in bb], [bb[b]["fraction"] for b in bb], "o-")
    axes[1].axhline(0.95, color="r", ls="--", lw=0.8)
    axes[1].set(xscale="log", xlabel="budget (tokens)", ylabel="answerable fraction", title="rule reader on rendering",
                ylim=(0, 1.05))
    ft = result["accuracy_by_category"]
    cats = sorted(ft["with_description"])
    import numpy as np

    x = np.arange(len(cats))
    axes[2].bar(x - 0.2, [ft["with_description"][c] for c in cats], 0.4, label="with description")
    axes[2].bar(x + 0.2, [ft["without_description"][c] for c in cats], 0.4, label="without")
    axes[2].axhline(0.25, color="gray", ls=":", lw=0.8, label="chance")
    axes[2].set_xticks(x, cats)
    axes[2].set(ylim=(0, 1), title=f"fine-tuned {result['finetune']['setup']['parameters'] / 1e6:.1f}M model")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 300; quick 4)")
    args = p.parse_args()
    out = _common.out_dir(args)
    q = args.quick
    sizes = [300, 1000] if q else [1000, 10000, 100000]
    speed = describe_speed(sizes, {300: 3, 1000: 5 if not q else 3, 10000: 3, 100000: 2})
    budgets = [250, 500, 1000, DEFAULT_BUDGET, 4000]
    ans = answerability(4 if q else 10, 4 if q else 40, budgets)
    with tempfile.TemporaryDirectory(prefix="spatial-ft-") as work:
        ft = finetune(Path(work), train_cities=2 if q else 40, blocks=3 if q else 6, per_category=3 if q else 20,
                      test_per_category=2 if q else 30, steps=args.steps or (4 if q else 300),
                      preset="tiny" if q else "demo", budget=512, seq_len=512, batch=4 if q else 16,
                      threads=args.threads)
    biggest = speed[str(sizes[-1])]
    result = {
        "describe_seconds": speed,
        "describe_seconds_100k": speed["100000"]["median"] if "100000" in speed else None,
        "describe_seconds_100k_2_threads": speed["largest_workers_2"]["median"] if "100000" in speed else None,
        "describe_features_per_second": biggest["features"] / biggest["median"],
        "answerable_fraction": ans["by_budget"][str(DEFAULT_BUDGET)]["fraction"],
        "default_budget": DEFAULT_BUDGET,
        "answerability": ans,
        "accuracy_by_category": {"with_description": ft["with_description"]["accuracy_by_category"],
                                 "without_description": ft["without_description"]["accuracy_by_category"]},
        "accuracy_with_description": ft["with_description"]["accuracy"],
        "accuracy_without_description": ft["without_description"]["accuracy"],
        "finetune": ft,
        "quick": q,
    }
    _common.write("spatial", result, out)
    plot(result, out / "spatial.png")
    print(f"wrote {out / 'spatial.png'}")


if __name__ == "__main__":
    main()
