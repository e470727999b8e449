"""A PNG map of an SSD: areas, lines and points by class, and the relations as thin arrows."""

from __future__ import annotations

from pathlib import Path

from duomind.apps.spatial.ssd import GREEN, ROADS, WATER, features_by_id


def plot_map(ssd: dict, out: str | Path, max_relations: int = 400, labels: int = 25) -> Path:
    """Draw the scene (bboxes for areas, node chains for lines, dots for points) and up to `max_relations`
    relation arrows; label the `labels` largest areas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    byid = features_by_id(ssd)
    fig, ax = plt.subplots(figsize=(9, 9))
    for f in ssd["polygons"]:
        x0, y0, x1, y1 = f["bbox"]
        color = "#7fc97f" if f["fclass"] in GREEN else "#80b1d3" if f["fclass"] in WATER else "#bebada"
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=color, edgecolor="#555", lw=0.3, alpha=0.8))
    for f in ssd["lines"]:
        xs, ys = zip(*f["nodes"])
        ax.plot(xs, ys, color="#444" if f["fclass"] in ROADS else "#1f78b4", lw=1.2 if f["fclass"] == "primary" else 0.6)
    if ssd["points"]:
        xs, ys = zip(*(f["center"] for f in ssd["points"]))
        ax.scatter(xs, ys, s=8, color="#e41a1c", zorder=3, label="POI")
    drawn = 0
    for f in [*ssd["polygons"], *ssd["points"]]:
        for r in f["relations"]:
            if drawn >= max_relations:
                break
            t = byid[r["target"]]
            ax.annotate("", xy=t["center"], xytext=f["center"],
                        arrowprops=dict(arrowstyle="->", color="#ff7f00", lw=0.4, alpha=0.6))
            drawn += 1
    for f in sorted(ssd["polygons"], key=lambda f: -f["area_m2"])[:labels]:
        ax.text(*f["center"], f["name"], fontsize=6, ha="center")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(f"scene: {len(ssd['polygons'])} areas, {len(ssd['lines'])} lines, {len(ssd['points'])} points; "
                 f"{drawn} relations drawn")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
