"""`duomind distill --config recipes/distill/x.yaml`: flags and YAML keys map onto `DistillConfig`."""

from __future__ import annotations

from duomind.distill.config import DistillConfig


def distill_cli(cfg: DistillConfig) -> None:
    """Iterative distillation: teacher sampling, verification, difficulty-balanced SFT, inter-iteration merging.

    Resumes an existing run in out_dir at the stage where it stopped.
    """
    from rich.console import Console
    from rich.table import Table

    from duomind.distill.loop import distill

    report = distill(cfg)
    table = Table(title=f"iterative distillation: {cfg.out_dir}/report.json, report.png")
    for col in ("iteration", "selected", "accuracy", "by difficulty", "mean tokens"):
        table.add_column(col)
    for row in report["iterations"]:
        ev = row["eval"]
        table.add_row(str(row["iteration"]), str(row.get("selected", {}).get("n", "-")), f"{ev['accuracy']:.1%}",
                      " ".join(f"L{k} {v:.0%}" for k, v in ev["by_difficulty"].items()), f"{ev['mean_tokens']:.0f}")
    Console().print(table)
    print(f"final student: {report['iterations'][-1]['student']}")
