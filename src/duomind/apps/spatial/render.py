"""Compact text rendering of an SSD within a token budget.

Features are ranked by relevance to the question (those it names first, in the order named, then the
features they relate to) and then by salience (size, and how often other features relate to them); the
stats block always comes first and a closing line reports what was left out.

Line format (one feature per line; a rule-based reader in `questions.py` parses it):
    [A4] Jade Hall 16 (building) area=1208m2 h=79.6m @114.360351,30.541361 | rel: P3 E 37m, A5 E 48m |
    near: L7 15m, P3 16m | img: red brick building, about 27 storeys | 50m: roads L1 L7; pois P3; buildings A3 A5
Relations read "target bearing distance": the target lies in that direction from this feature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from duomind.apps.spatial.ssd import features_by_id

_PIECE = re.compile(r"\d|[A-Za-z]+|[^\sA-Za-z\d]")


def count_tokens(text: str) -> int:
    """A tokenizer-free token estimate: one per digit, word or punctuation mark.

    Digits count singly because DuoMind's tokenizers (like Llama 3's) split numbers into digits; for
    most BPE tokenizers this over-counts, so a budget stays safe. Pass a real tokenizer's count instead
    where one is at hand.
    """
    return len(_PIECE.findall(text))


@dataclass
class Rendered:
    """A rendering: the text, its token count, and which features made it in or were left out."""

    text: str
    tokens: int
    included: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)


def _m(v: float) -> str:
    return f"{round(v)}m"


def feature_line(f: dict) -> str:
    """One feature as one line (see the module docstring)."""
    head = f"[{f['id']}] {f['name']} ({f['fclass']})"
    if "area_m2" in f:
        head += f" area={round(f['area_m2'])}m2"
        if f.get("height_m") is not None:
            head += f" h={f['height_m']}m"
    if "length_m" in f:
        head += f" len={_m(f['length_m'])}"
    head += f" @{f['center'][0]:.6f},{f['center'][1]:.6f}"
    parts = [head]
    if f.get("connects"):
        parts.append("connects: " + " ".join(f["connects"]))
    if f.get("relations"):
        parts.append("rel: " + ", ".join(f"{r['target']} {r['bearing']} {_m(r['distance_m'])}" for r in f["relations"]))
    if f.get("landmarks"):
        parts.append("near: " + ", ".join(f"{r['target']} {_m(r['distance_m'])}" for r in f["landmarks"]))
    if f.get("image_caption"):
        parts.append("img: " + "; ".join(f["image_caption"]))
    if f.get("topology"):
        parts.append("50m: " + "; ".join(f"{k} {' '.join(v['ids'])}" + (f" (+{v['count'] - len(v['ids'])})"
                                                                          if v["count"] > len(v["ids"]) else "")
                                          for k, v in f["topology"].items()))
    return " | ".join(parts)


def stats_block(ssd: dict) -> str:
    """Scene statistics in a few lines."""
    s = ssd["stats"]
    road = s["road"]
    lines = [f"SCENE {s['features']['polygons']} areas, {s['features']['lines']} lines, {s['features']['points']} "
             f"points; extent {s['extent_km2']:.3f} km2",
             "land use: " + ", ".join(f"{k} {v:.0%}" for k, v in s["landuse_share"].items()) +
             f"; green cover {s['green_coverage']:.1%}, water {s['water_coverage']:.1%}, "
             f"buildings {s['building_coverage']:.1%}",
             f"roads: {road['count']} ({road['length_km']} km, {road['density_km_per_km2']} km/km2), "
             f"{road['intersections']} intersections, {road['dead_ends']} dead ends, {road['components']} "
             f"component(s), beta {road['beta_index']}, gamma {road['gamma_index']}"]
    if s["poi_count"]:
        lines.append("POIs per km2: " + ", ".join(f"{k} {v}" for k, v in list(s["poi_density_per_km2"].items())[:12]))
    if s["height_m"]["buildings_measured"]:
        lines.append(f"building height: mean {s['height_m']['mean']}m, max {s['height_m']['max']}m "
                     f"({s['height_m']['buildings_measured']} measured)")
    return "\n".join(lines)


def salience(ssd: dict) -> dict[str, float]:
    """Salience per feature: log size (area, or length as a 10 m wide band, POIs as 100 m2) plus how often
    other features relate to it, so landmarks and large features survive a tight budget."""
    indeg: dict[str, int] = {}
    for f in features_by_id(ssd).values():
        for r in f.get("relations", []):
            indeg[r["target"]] = indeg.get(r["target"], 0) + 1
    out = {}
    for f in features_by_id(ssd).values():
        size = f.get("area_m2") or 10 * f.get("length_m", 0) or 100.0
        out[f["id"]] = math.log1p(size) + 0.5 * indeg.get(f["id"], 0)
    return out


def named_entities(ssd: dict, question: str) -> list[str]:
    """Ids of features named (by name or id) in the question, in order of first mention."""
    q = question.lower()
    hits = []
    for f in features_by_id(ssd).values():
        for key in (f["name"].lower(), f["id"].lower()):
            m = re.search(r"(?<![\w])" + re.escape(key) + r"(?![\w])", q)
            if m:
                hits.append((m.start(), f["id"]))
                break
    return [i for _, i in sorted(hits)]


def render(ssd: dict, budget: int = 2000, question: str | None = None, entities: Iterable[str] = (),
           count: Callable[[str], int] = count_tokens, stats: bool = True) -> Rendered:
    """Render an SSD to text within `budget` tokens, most relevant features first.

    Args:
        ssd: The scene description.
        budget: Token budget of the whole text (stats, features and the omission report).
        question: Its named entities (and their relation targets) are rendered first.
        entities: Further ids to put first (e.g. a multiple-choice question's options).
        count: Token counter (default: `count_tokens`).
        stats: Include the scene statistics block.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}.")
    byid = features_by_id(ssd)
    first = [e for e in entities if e in byid]
    if question:
        first += named_entities(ssd, question)
    hop = [r["target"] for e in first for r in byid[e].get("relations", [])]
    sal = salience(ssd)
    rest = sorted(byid, key=lambda i: (-sal[i], i))
    order = list(dict.fromkeys([*first, *hop, *rest]))
    head = stats_block(ssd) if stats else ""
    used = count(head) if head else 0
    reserve = 24  # room for the omission report
    lines, included, omitted = [], [], []
    misses = 0
    for n, fid in enumerate(order):
        if misses >= 32:  # a full budget: stop trying (counting every remaining line costs O(n) per render)
            omitted += order[n:]
            break
        line = feature_line(byid[fid])
        c = count(line) + 1
        if used + c + reserve <= budget:
            lines.append(line)
            included.append(fid)
            used += c
        else:
            omitted.append(fid)
            misses += 1
    while True:
        text = "\n".join([head, *lines] if head else lines)
        if omitted:
            kinds = {p: sum(1 for o in omitted if o.startswith(p)) for p in ("A", "L", "P")}
            text += (f"\n(left out {len(omitted)} of {len(byid)} features for the {budget}-token budget: "
                     f"{kinds['A']} areas, {kinds['L']} lines, {kinds['P']} points, least salient first)")
        tokens = count(text)
        if tokens <= budget or not lines:  # the report may outgrow its reserve: give back the last lines
            return Rendered(text, tokens, included, omitted)
        lines.pop()
        omitted.insert(0, included.pop())
