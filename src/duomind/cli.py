"""The `duomind` command line: one verb table, each verb a thin call into the library.

Verbs are generated from function signatures with jsonargparse (as litgpt does), so every verb has
`--help`, and `--config recipe.yaml` gives defaults that flags override. Only the module of the verb
being run is imported, so `duomind --help` stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

# "verb [sub-verb]" -> ("module:function", one-line description). Keep sorted by verb.
VERBS: dict[str, tuple[str, str]] = {
    "asr export": ("duomind.apps.asr.cli:export_cli", "Export the ASR model to ONNX (encoder+CTC, decoder) with an onnxruntime parity check."),
    "asr synth": ("duomind.apps.asr.cli:synth_cli", "Write a multilingual synthetic speech corpus (espeak-ng) with held-out speakers."),
    "asr train": ("duomind.apps.asr.train:train_cli", "Train the Dolphin-style ASR model (joint CTC-attention) from JSONL manifests."),
    "asr transcribe": ("duomind.apps.asr.cli:transcribe_cli", "Transcribe audio: segments with language and region; txt, json, srt, vtt."),
    "chat": ("duomind.serve.cli:chat_cli", "Chat with a model in the terminal: streaming, thinking dimmed, /fast /slow /auto."),
    "convert": ("duomind.convert:convert_cli", "Convert a Hugging Face checkpoint to DuoMind or back (direction from SRC)."),
    "data make": ("duomind.tasks.cli:make", "Write synthetic verifiable task data: tasks, pre-training corpus, SFT chats."),
    "demo": ("duomind.demo:demo", "The embedded reasoner answers held-back problems in fast, slow and auto mode (FIRP on)."),
    "distill": ("duomind.distill.cli:distill_cli", "Iterative distillation: teacher sampling, verification, difficulty-balanced SFT, merging."),
    "generate": ("duomind.generate.cli:generate_cli", "Generate text from a checkpoint with DuoMind's KV-cache decode loop."),
    "med eval": ("duomind.apps.medical.cli:eval_cli", "Evaluate a VLM on medical multi-image QA / hallucination data: accuracy, judge rubric, ROUGE-L, BLEU."),
    "med synth": ("duomind.apps.medical.cli:synth_cli", "Write procedural medical scans with exact-answer questions (Med-MIM + MedHallTune formats)."),
    "med train": ("duomind.apps.medical.train:train_cli", "Train the small multi-image VLM (caption pre-alignment, instruction tuning; full or LoRA)."),
    "med validate": ("duomind.apps.medical.data:validate_cli", "List every problem of Med-MIM / MedHallTune / TSV data (missing images, placeholder counts)."),
    "merge": ("duomind.merge:merge_cli", "Merge checkpoints (linear, task arithmetic, TIES, DARE, SLERP, Model Stock) from a YAML config."),
    "moe stats": ("duomind.moe_cli:stats_cli", "Per-layer expert and device loads and imbalance score (IS) of a MoE checkpoint; heat-map PNG."),
    "moe upcycle": ("duomind.moe_cli:upcycle_cli", "Turn a dense checkpoint into a MoE or MoGE one (experts copied from the MLP)."),
    "reasoner train": ("duomind.reasoner.dual:train_cli", "Dual-system training: fast + slow SFT, auto labels from the model's own pass rates, fusion SFT, optional AdaptThink RL, FIRP predictors, ship."),
    "prune": ("duomind.prune.cli:prune_cli", "Prune a checkpoint (Pangu Light: CLAP, SLNP, post-norm absorption; minitron, shortgpt)."),
    "prune plan": ("duomind.prune.cli:plan_cli", "Print a pruning plan: sizes and parameter counts per part, before any work."),
    "prune recover": ("duomind.prune.cli:recover_cli", "Recover a pruned model by KD from its unpruned source (the trainer, mode kd)."),
    "reward score": ("duomind.rewards.cli:score", "Score reward records (JSONL) with MARS: math, code in a sandbox, LLM judge, format."),
    "reward serve": ("duomind.rewards.cli:serve", "Serve MARS reward scoring over HTTP for remote RL workers."),
    "serve": ("duomind.serve.cli:serve_cli", "Serve a model over an OpenAI-compatible API (continuous batching, fast/slow/auto)."),
    "rl": ("duomind.rl.cli:rl_cli", "RL (GRPO) with MARS rewards and a stale-synchronous scheduler on Ray."),
    "sim calibrate": ("duomind.sim.cli:calibrate", "Measure this machine into the simulator's `local` hardware profile."),
    "sim infer": ("duomind.sim.cli:infer", "Simulate serving a model: TTFT, decode step, tokens/s, memory per device."),
    "sim search": ("duomind.sim.cli:search", "Search model shapes x parallel plans; print and plot the throughput-vs-size front."),
    "sim train": ("duomind.sim.cli:train", "Simulate a training step: time breakdown, tokens/s, MFU, memory per device."),
    "spatial ask": ("duomind.apps.spatial.cli:ask_cli", "Ask an LLM (local DuoMind or OpenAI-compatible) about a scene description."),
    "spatial bench": ("duomind.apps.spatial.cli:bench_cli", "Generate perception questions with exact answers from an SSD, ask a backend, score."),
    "spatial describe": ("duomind.apps.spatial.cli:describe_cli", "Structured scene description (JSON) from GeoJSON, OSM, shapefiles, CSV, point clouds."),
    "speculate bench": ("duomind.generate.speculate_cli:bench_cli", "Compare speculative decoders (FIRP, Medusa heads, prompt lookup, draft model): tokens/s, acceptance."),
    "speculate train": ("duomind.generate.speculate_cli:train_cli", "Train FIRP predictors or Medusa-style heads for a checkpoint (base model frozen)."),
    "tokenizer train": ("duomind.tokenizer:train_cli", "Train a byte-level BPE tokenizer with chat template and reasoning tokens."),
    "train": ("duomind.train.cli:train_cli", "Pre-train, fine-tune (SFT) or distil (KD) a model from a recipe."),
}

# Verbs whose first argument may be given without its flag although it has a default (`duomind serve CKPT`).
OPTIONAL_POSITIONAL = {"chat": "checkpoint", "serve": "checkpoint"}


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for verb in VERBS:
        head, _, sub = verb.partition(" ")
        groups.setdefault(head, [])
        if sub:
            groups[head].append(sub)
    return groups


def _print_help(prefix: str = "") -> None:
    rows = [(v, d) for v, (_, d) in sorted(VERBS.items()) if v.startswith(prefix)]
    width = max(len(v) for v, _ in rows)
    print("usage: duomind <verb> [options]   (duomind <verb> --help for a verb's options)\n")
    print("verbs:")
    for verb, doc in rows:
        print(f"  {verb.ljust(width)}  {doc}")


def _resolve(argv: list[str]) -> tuple[str, list[str]]:
    for n in (2, 1):
        key = " ".join(argv[:n])
        if len(argv) >= n and key in VERBS:
            return key, argv[n:]
    head = argv[0]
    if head in _groups():  # a group name alone: list its sub-verbs
        _print_help(head + " ")
        raise SystemExit(0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2)
    close = difflib.get_close_matches(" ".join(argv[:2]), VERBS, n=3) or difflib.get_close_matches(head, VERBS, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise SystemExit(f"duomind: unknown verb {head!r}.{hint} Run `duomind --help` for the list.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] == "--version":
        from duomind import __version__

        print(__version__)
        return 0
    verb, rest = _resolve(argv)
    if verb in OPTIONAL_POSITIONAL and rest and not rest[0].startswith("-"):
        rest = [f"--{OPTIONAL_POSITIONAL[verb]}", *rest]
    target, doc = VERBS[verb]
    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    from jsonargparse import CLI, ActionConfigFile, ArgumentParser

    config_cls = _single_dataclass_param(fn)
    try:
        if config_cls is not None:  # flat flags and YAML keys map straight onto the dataclass's fields
            # (not CLI(config_cls): it would turn any public method of the dataclass into a sub-command)
            parser = ArgumentParser(prog=f"duomind {verb}", description=doc)
            parser.add_argument("--config", action=ActionConfigFile, help="YAML recipe; flags override its keys")
            parser.add_class_arguments(config_cls)
            fields = parser.parse_args(rest).as_dict()
            fields.pop("config", None)
            fn(config_cls(**fields))
        else:
            CLI(fn, args=rest, prog=f"duomind {verb}", description=doc, as_positional=True)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Our errors already name the problem and the fix; a traceback would bury that. DUOMIND_DEBUG=1 shows it.
        if os.environ.get("DUOMIND_DEBUG"):
            raise
        raise SystemExit(f"duomind {verb}: error: {err}") from err
    return 0


def _single_dataclass_param(fn) -> type | None:
    """The dataclass type of `fn`'s only parameter, if that is its signature."""
    import dataclasses
    import inspect
    import typing

    params = list(inspect.signature(fn).parameters)
    if len(params) != 1:
        return None
    hint = typing.get_type_hints(fn).get(params[0])
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
