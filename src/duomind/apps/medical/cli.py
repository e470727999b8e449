"""`duomind med validate | synth | train | eval`: thin calls into the medical app."""

from __future__ import annotations

from pathlib import Path


def synth_cli(out: str, n_per_ability: int = 100, seed: int = 0, image_size: int = 32, open_fraction: float = 0.25,
              captions: int = 0, tsv: bool = False) -> None:
    """Write a procedural medical multi-image benchmark with exact answers (Med-MIM + MedHallTune formats).

    Args:
        out: Output directory (images/, medmim.json, medhalltune.jsonl, optional captions.json, medmim.tsv).
        n_per_ability: Questions per Med-MIM ability (temporal, reasoning, comparison, co-reference).
        seed: Random seed (same seed, same data).
        image_size: Side of the grayscale scans in pixels.
        open_fraction: Share of open-ended (not multiple-choice) questions.
        captions: Single-image caption items for pre-alignment (0 = none).
        tsv: Also write the closed questions as a VLMEvalKit-style TSV with base64 images.
    """
    from duomind.apps.medical.synth import write_dataset

    paths = write_dataset(out, n_per_ability, seed, image_size, open_fraction, captions, tsv)
    for name, p in paths.items():
        print(f"{name}: {p}")


def eval_cli(data: str | list[str], model: str = "", out: str = "med-eval", judge: str = "none",
             judge_model: str = "judge", api_model: str = "default", api_key_env: str = "OPENAI_API_KEY",
             max_new_tokens: int = 48, timeout_s: float = 60.0, limit: int = 0, skip_invalid: bool = False) -> dict:
    """Evaluate a VLM: accuracy per ability, false-premise rejection, ROUGE-L/BLEU, judge rubric; report + plot.

    Args:
        data: Med-MIM .json, MedHallTune .jsonl or VLMEvalKit .tsv file(s): one path, or several joined by commas.
        model: A DuoMind VLM run/checkpoint (`duomind med train`), a local Hugging Face image-text-to-text
            model directory, or the base URL of an OpenAI-compatible API (http://host:port/v1).
        out: Report directory (report.json, report.md, report.png, predictions per input file).
        judge: `none`, an OpenAI-compatible URL, or a DuoMind checkpoint: scores the four-score rubric.
        judge_model: Model name sent to a judge URL.
        api_model: Model name sent to an OpenAI-compatible `model` URL.
        api_key_env: Environment variable holding the API key (for both URLs).
        max_new_tokens: Answer length limit.
        timeout_s: Per-request timeout of HTTP backends.
        limit: Evaluate only the first N items of each file (0 = all).
        skip_invalid: Record items with problems (missing/broken images, placeholder mismatch) as failures
            instead of refusing the data.
    """
    from duomind.apps.medical.backends import make_backend
    from duomind.apps.medical.data import DataProblems, load, split_paths, write_predictions
    from duomind.apps.medical.eval import evaluate, make_judge, markdown, write_report

    if not model:
        raise ValueError("no model: pass --model RUN_DIR (from `duomind med train`), a local Hugging Face model "
                         "directory, or --model http://host:port/v1 for an OpenAI-compatible API.")
    paths = split_paths(data)
    per_file = []
    for p in paths:
        items, problems = load(p)
        if problems and not skip_invalid:
            raise DataProblems(p, problems)
        per_file.append((Path(p), items[:limit] if limit else items))
    backend = make_backend(model, api_model, api_key_env, max_new_tokens, timeout_s)
    complete = make_judge(judge, judge_model, api_key_env, timeout_s)
    items = [it for _, its in per_file for it in its]
    report, replies = evaluate(items, backend, complete)
    report["inputs"] = [str(p) for p, _ in per_file]
    report["model"] = model
    written = write_report(report, out)
    start = 0
    for p, its in per_file:
        pred = Path(out) / f"predictions-{p.stem}{p.suffix}"
        write_predictions(its, [r.text for r in replies[start:start + len(its)]], pred)
        start += len(its)
    print(markdown(report))
    print(f"wrote {', '.join(str(v) for v in written.values())}")
    return report
