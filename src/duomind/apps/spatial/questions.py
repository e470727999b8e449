"""Perception questions with exact answers, a rule-based reader of rendered text, and a scorer.

The five categories of SpatialLLM's perception benchmark (arXiv 2505.12703): distance, direction
(position), POI, route planning and grounding, each multiple choice (A-D) and generated from the SSD's
geometry, so accuracy is measurable offline. `rule_answer` answers from the rendered TEXT alone; the
share it gets right is how much of the answer survives rendering within a budget.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import networkx as nx

from duomind.apps.spatial.geo import BEARINGS
from duomind.apps.spatial.ssd import ROADS, features_by_id

CATEGORIES = ("distance", "direction", "poi", "route", "grounding")
LETTERS = "ABCD"


@dataclass
class Question:
    """A multiple-choice question: text, four options, the correct letter, and the ids it concerns.

    `entities` lists the features the question names, then those of the options in option order (A first),
    so a rendering that puts them first reveals nothing about which option is right.
    """

    id: str
    category: str
    text: str
    options: list[str]
    answer: str
    entities: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        """Question and lettered options, asking for a letter."""
        opts = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(self.options))
        return f"{self.text}\n{opts}\nAnswer with the letter of the correct option."


def _mc(rng: random.Random, truth: str, distractors: list[str]) -> tuple[list[str], str]:
    opts = [truth, *distractors[:3]]
    rng.shuffle(opts)
    return opts, LETTERS[opts.index(truth)]


def street_graph(ssd: dict) -> nx.Graph:
    """Road lines as nodes, an edge where two roads connect (the line graph of the road network)."""
    g = nx.Graph()
    for f in ssd["lines"]:
        if f["fclass"] in ROADS:
            g.add_node(f["id"])
            for t in f.get("connects", []):
                g.add_edge(f["id"], t)
    return g


def _nearest_road(f: dict, roads: set[str]) -> str | None:
    for lm in f.get("landmarks", []):
        if lm["target"] in roads:
            return lm["target"]
    return None


def generate(ssd: dict, per_category: int = 20, seed: int = 0) -> list[Question]:
    """`per_category` questions of each category (fewer where the scene lacks material)."""
    rng = random.Random(seed)
    byid = features_by_id(ssd)
    feats = [f for f in byid.values() if f.get("relations")]
    areas_points = [f for f in [*ssd["polygons"], *ssd["points"]]]
    pois = ssd["points"]
    out: list[Question] = []

    def qid() -> str:
        return f"q{len(out) + 1}"

    # distance and direction: from a relation of a random feature
    for cat in ("distance", "direction"):
        for f in rng.sample(feats, min(per_category, len(feats))):
            r = rng.choice(f["relations"])
            t = byid[r["target"]]
            if cat == "distance":
                d = round(r["distance_m"])
                # distractors at least 35% away, so a reader rounding to whole metres still picks exactly one
                opts = [f"{round(d * k)} m" for k in rng.sample([0.4, 0.6, 1.5, 2.0, 2.7], 3)]
                options, ans = _mc(rng, f"{d} m", opts)
                text = f"How far is {t['name']} from {f['name']} (centre to centre)?"
            else:
                others = [b for b in BEARINGS if b != r["bearing"]]
                options, ans = _mc(rng, r["bearing"], rng.sample(others, 3))
                text = f"In which direction does {t['name']} lie as seen from {f['name']}?"
            out.append(Question(qid(), cat, text, options, ans, [f["id"], t["id"]]))
    # POI: the POI nearest a feature
    cands = [f for f in areas_points if any(lm["target"].startswith("P") for lm in f.get("landmarks", []))]
    for f in rng.sample(cands, min(per_category, len(cands))):
        near = next(lm for lm in f["landmarks"] if lm["target"].startswith("P"))
        others = [p for p in pois if p["id"] not in (near["target"], f["id"])]
        if len(others) < 3:
            continue
        wrong = rng.sample(others, 3)
        truth = byid[near["target"]]
        options, ans = _mc(rng, truth["name"], [w["name"] for w in wrong])
        ids = {p["name"]: p["id"] for p in (truth, *wrong)}
        out.append(Question(qid(), "poi", f"Which POI is closest to {f['name']}?", options, ans,
                            [f["id"], *(ids[o] for o in options)]))
    # route: fewest streets between the roads nearest two POIs
    g = street_graph(ssd)
    roads = set(g)
    located = [p for p in pois if _nearest_road(p, roads)]
    tries = 0
    n_route = 0
    while n_route < per_category and len(located) >= 2 and tries < per_category * 20:
        tries += 1
        a, b = rng.sample(located, 2)
        ra, rb = _nearest_road(a, roads), _nearest_road(b, roads)
        if ra == rb or not nx.has_path(g, ra, rb):
            continue
        path = nx.shortest_path(g, ra, rb)
        wrong = _wrong_routes(rng, g, path)
        if len(wrong) < 3:
            continue
        name = {i: byid[i]["name"] for i in g}
        routes = {" -> ".join(name[i] for i in r): r for r in (path, *wrong)}
        options, ans = _mc(rng, " -> ".join(name[i] for i in path), [" -> ".join(name[i] for i in w) for w in wrong])
        ents = list(dict.fromkeys([a["id"], b["id"], *(i for o in options for i in routes[o])]))
        text = (f"Which route from {a['name']} to {b['name']} uses the fewest streets, starting on the street "
                f"nearest {a['name']} and ending on the street nearest {b['name']}?")
        out.append(Question(qid(), "route", text, options, ans, ents))
        n_route += 1
    # grounding: which feature sits at these coordinates
    for f in rng.sample(areas_points, min(per_category, len(areas_points))):
        others = [o for o in rng.sample(areas_points, min(len(areas_points), 8)) if o["id"] != f["id"]
                  and o["name"] != f["name"]][:3]
        if len(others) < 3:
            continue
        options, ans = _mc(rng, f["name"], [o["name"] for o in others])
        ids = {o["name"]: o["id"] for o in (f, *others)}
        text = f"Which feature is centred at ({f['center'][0]:.6f}, {f['center'][1]:.6f})?"
        out.append(Question(qid(), "grounding", text, options, ans, [ids[o] for o in options]))
    return out


def _wrong_routes(rng: random.Random, g: nx.Graph, path: list[str]) -> list[list[str]]:
    """Three routes that are not fewest-street routes from path[0] to path[-1]: broken (two consecutive
    streets that do not connect) or longer than the shortest."""
    wrong: list[list[str]] = []
    nodes = list(g)
    best = len(path)
    for _ in range(60):
        w = list(path)
        kind = rng.random()
        if kind < 0.5 and len(nodes) > 2:  # swap one street for a random one
            k = rng.randrange(len(w))
            w[k] = rng.choice(nodes)
        else:  # a detour: an extra street in the middle
            k = rng.randrange(1, len(w))
            w.insert(k, rng.choice(nodes))
        valid = all(g.has_edge(x, y) for x, y in zip(w, w[1:])) and w[0] == path[0] and w[-1] == path[-1]
        if (valid and len(w) <= best) or w in wrong or len(set(w)) < len(w):
            continue
        wrong.append(w)
        if len(wrong) == 3:
            break
    return wrong


# --- the rule-based reader: answers from rendered text only --------------------------------------------------

_LINE = re.compile(r"^\[(\w+)\] (.+?) \(([^)]*)\)(.*)$")


def parse_text(text: str) -> dict[str, dict]:
    """The features of a rendering: id -> {name, fclass, center, rel, near, connects}."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        fid, name, fclass, rest = m.groups()
        parts = rest.split(" | ")
        c = re.search(r"@(-?[\d.]+),(-?[\d.]+)", parts[0])
        f = {"name": name, "fclass": fclass, "center": (c.group(1), c.group(2)) if c else None, "rel": {},
             "near": [], "connects": []}
        for p in parts[1:]:
            key, _, body = p.partition(": ")
            if key == "rel":
                for item in body.split(", "):
                    t, b, d = item.split(" ")
                    f["rel"][t] = (b, float(d.rstrip("m")))
            elif key == "near":
                f["near"] = [item.split(" ")[0] for item in body.split(", ")]
            elif key == "connects":
                f["connects"] = body.split()
        out[fid] = f
    return out


def rule_answer(q: Question, text: str) -> str | None:
    """Answer a question from a rendering alone, or None when the text lacks what is needed."""
    feats = parse_text(text)
    by_name = {f["name"]: i for i, f in feats.items()}
    names = [n for n in by_name if n in q.text]

    def after(word: str) -> str | None:  # the feature named right after `word` in the question
        best = None
        for n in names:
            pos = q.text.find(word + " " + n)
            if pos >= 0 and (best is None or len(n) > len(best)):
                best = n
        return by_name.get(best) if best else None

    if q.category in ("distance", "direction"):
        src = after("from")
        tgt = None
        for n in sorted(names, key=len, reverse=True):
            if by_name[n] != src and q.text.find(n) < q.text.find(" from ") + 1:
                tgt = by_name[n]
                break
        if not src or not tgt or tgt not in feats[src]["rel"]:
            return None
        bearing, dist = feats[src]["rel"][tgt]
        if q.category == "direction":
            return LETTERS[q.options.index(bearing)] if bearing in q.options else None
        vals = [float(o.split()[0]) for o in q.options]
        return LETTERS[min(range(len(vals)), key=lambda i: abs(vals[i] - dist))]
    if q.category == "poi":
        src = after("to")
        if not src:
            return None
        near = [t for t in feats[src]["near"] if t.startswith("P") and t in feats]
        if not near:
            return None
        name = feats[near[0]]["name"]
        return LETTERS[q.options.index(name)] if name in q.options else None
    if q.category == "grounding":
        m = re.search(r"\((-?[\d.]+), (-?[\d.]+)\)", q.text)
        for f in feats.values():
            if m and f["center"] == (m.group(1), m.group(2)) and f["name"] in q.options:
                return LETTERS[q.options.index(f["name"])]
        return None
    if q.category == "route":
        a, b = after("from"), after("to")
        if not a or not b:
            return None
        start = next((t for t in feats[a]["near"] if t.startswith("L")), None)
        end = next((t for t in feats[b]["near"] if t.startswith("L")), None)
        best = None
        for i, opt in enumerate(q.options):
            ids = [by_name.get(s) for s in opt.split(" -> ")]
            if None in ids or ids[0] != start or ids[-1] != end:
                continue
            if all(y in feats[x]["connects"] for x, y in zip(ids, ids[1:])) and (best is None or len(ids) < best[1]):
                best = (LETTERS[i], len(ids))
        return best[0] if best else None
    raise ValueError(f"unknown category {q.category!r}; one of {CATEGORIES}")


_CHOICE = [re.compile(p) for p in (r"(?i)answer\s*(?:is)?\s*[:\-]?\s*\(?([ABCD])\b", r"^\s*\(?([ABCD])[\).:\s]",
                                   r"^\s*([ABCD])\s*$", r"\b([ABCD])\)")]


def parse_choice(reply: str | None) -> str | None:
    """The letter an LLM chose: "Answer: B", a reply starting with "B)" / "B." / "B", or "B)" anywhere."""
    if not reply:
        return None
    text = reply.split("</think>")[-1].strip()
    for pat in _CHOICE:
        m = pat.search(text)
        if m:
            return m.group(1)
    return None


def score(questions: list[Question], choices: list[str | None]) -> dict:
    """Accuracy overall and per category; unanswered counts as wrong."""
    if len(questions) != len(choices):
        raise ValueError(f"{len(choices)} answers for {len(questions)} questions.")
    by: dict[str, list[bool]] = {}
    for q, c in zip(questions, choices):
        by.setdefault(q.category, []).append(c == q.answer)
    allv = [v for vs in by.values() for v in vs]
    return {"accuracy": sum(allv) / len(allv) if allv else 0.0, "n": len(allv),
            "accuracy_by_category": {k: sum(v) / len(v) for k, v in by.items()},
            "unanswered": sum(c is None for c in choices)}
