"""Procedural medical-like "scans" and questions with exact answers, for offline training and testing.

A scan is a small grayscale image: an elliptic organ on a dark background with at most one lesion per
quadrant. A lesion has a size (small, medium, large), an intensity (bright or dark against the organ) and a
texture (smooth or spotted). Patients get several views or follow-up visits in which lesions grow, shrink,
appear or resolve. From these, questions for the four Med-MIM abilities (arXiv 2505.19031: temporal,
reasoning, comparison, co-reference) are written in closed (4-way multiple choice) and open form, plus
MedHallTune-style premise questions (arXiv 2502.20780) whose premise is true (positive) or false
(negative: nonexistent lesion, wrong side, wrong size, wrong count) and whose ground truth corrects a false
premise. Every answer follows from the drawn lesions, so it is exact.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
SIZES = ("small", "medium", "large")
INTENSITIES = ("bright", "dark")
TEXTURES = ("smooth", "spotted")
ABILITIES = ("temporal", "reasoning", "comparison", "co-reference")
PREMISES = ("nonexistent", "wrong_side", "wrong_size", "wrong_count")
ORDINALS = ("first", "second", "third", "fourth")
NUMBERS = ("no", "one", "two", "three", "four")
LETTERS = "ABCD"
REJECT = "False premise"  # how every negative's ground truth begins

_RADIUS = {"small": 0.07, "medium": 0.12, "large": 0.18}  # of the image side
_LEVEL = {"background": 0.05, "organ": 0.32, "bright": 0.92, "dark": 0.0}


@dataclass(frozen=True)
class Lesion:
    size: str
    intensity: str
    texture: str

    def describe(self) -> str:
        return f"{self.size} {self.intensity} {self.texture} lesion"


@dataclass
class Scan:
    """One image: the lesion in each quadrant (absent quadrants are missing keys)."""

    lesions: dict[str, Lesion] = field(default_factory=dict)

    def caption(self) -> str:
        if not self.lesions:
            return "No lesion."
        return " ".join(f"{q.capitalize()}: {self.lesions[q].describe()}." for q in QUADRANTS if q in self.lesions)


def render(scan: Scan, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw a scan as a (size, size) uint8 image: organ ellipse, lesions, a little noise and jitter."""
    rng = rng or np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    ry, rx = size * rng.uniform(0.47, 0.5), size * rng.uniform(0.47, 0.5)
    img = np.full((size, size), _LEVEL["background"], np.float32)
    img[((yy - c) / ry) ** 2 + ((xx - c) / rx) ** 2 <= 1] = _LEVEL["organ"]
    for q, lesion in scan.lesions.items():
        row, col = divmod(QUADRANTS.index(q), 2)
        cy = size * (0.3 + 0.4 * row) + rng.uniform(-0.02, 0.02) * size
        cx = size * (0.3 + 0.4 * col) + rng.uniform(-0.02, 0.02) * size
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (_RADIUS[lesion.size] * size) ** 2
        if lesion.texture == "spotted":  # holes on a diagonal lattice, at organ level
            disk &= ((np.floor(yy) + np.floor(xx)) % 3) != 0
        img[disk] = _LEVEL[lesion.intensity]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _lesion(rng: random.Random, size: str | None = None, intensity: str | None = None) -> Lesion:
    return Lesion(size or rng.choice(SIZES), intensity or rng.choice(INTENSITIES), rng.choice(TEXTURES))


def _scan(rng: random.Random, n: int, exclude: tuple[str, ...] = ()) -> Scan:
    quads = rng.sample([q for q in QUADRANTS if q not in exclude], n)
    return Scan({q: _lesion(rng) for q in quads})


@dataclass
class Question:
    """A generated question: its scans, prompt (with one <image> per scan), answer and labels."""

    scans: list[Scan]
    prompt: str
    answer: str
    ability: str | None = None  # one of ABILITIES for Med-MIM items
    kind: str = "closed"  # closed | open
    options: dict[str, str] | None = None
    polarity: str | None = None  # positive | negative for premise items
    premise: str | None = None  # which false premise (negatives)


def _closed(scans, stem, options, correct, ability) -> Question:
    opts = dict(zip(LETTERS, options))
    letter = LETTERS[options.index(correct)]
    text = stem + " " + " ".join(f"{k}. {v}" for k, v in opts.items())
    return Question(scans, "<image>" * len(scans) + text, f"{letter}. {correct}", ability, "closed", opts)


def temporal(rng: random.Random, closed: bool) -> Question:
    """Follow-up visits: how the lesion of one quadrant changed from the first to the last visit."""
    q = rng.choice(QUADRANTS)
    change = rng.choice(("grew", "shrank", "appeared", "resolved"))
    n_visits = rng.choice((2, 3))
    if change == "grew":
        s0, s1 = sorted(rng.sample(range(3), 2))
    elif change == "shrank":
        s1, s0 = sorted(rng.sample(range(3), 2))
    else:
        s0 = s1 = rng.randrange(3)
    first = _lesion(rng, SIZES[s0])
    last = Lesion(SIZES[s1], first.intensity, first.texture)
    sizes = {"grew": [s0, s1], "shrank": [s0, s1], "appeared": [None, s1], "resolved": [s0, None]}[change]
    if n_visits == 3:  # the middle visit: between the two sizes, or as the first before an appearance/resolution
        a, b = sizes
        sizes = [a, (a + b) // 2 if a is not None and b is not None else a, b]
    others = _scan(rng, rng.choice((0, 1)), exclude=(q,))  # a stable distractor elsewhere
    scans = []
    for s in sizes:
        les = dict(others.lesions)
        if s is not None:
            les[q] = Lesion(SIZES[s], first.intensity, first.texture)
        scans.append(Scan(les))
    stem = (f"These are {NUMBERS[n_visits]} visits of one patient, in order. How did the lesion in the {q} "
            "change from the first to the last visit?")
    if closed:
        return _closed(scans, stem, ["it grew", "it shrank", "it appeared", "it resolved"], f"it {change}", "temporal")
    text = {"grew": f"It grew from {first.size} to {last.size}.", "shrank": f"It shrank from {first.size} to {last.size}.",
            "appeared": f"It appeared: no lesion at first, {last.size} at the last visit.",
            "resolved": f"It resolved: {first.size} at first, no lesion at the last visit."}[change]
    return Question(scans, "<image>" * n_visits + stem, text, "temporal", "open")


def reasoning(rng: random.Random, closed: bool) -> Question:
    """Multi-view diagnosis: apply a stated rule to the lesions seen across two views."""
    dx = rng.choice(("no finding", "cyst", "tumour", "cyst and tumour"))
    wanted = {"no finding": [], "cyst": ["bright"], "tumour": ["dark"], "cyst and tumour": ["bright", "dark"]}[dx]
    views: list[dict[str, Lesion]] = [{}, {}]
    intensities = list(wanted)
    if intensities and rng.random() < 0.5:  # sometimes one kind shows in both views
        intensities.append(rng.choice(intensities))
    for intensity in intensities:
        v = rng.randrange(2)
        free = [q for q in QUADRANTS if q not in views[v]]
        views[v][rng.choice(free)] = _lesion(rng, intensity=intensity)
    scans = [Scan(v) for v in views]
    stem = ("Two views of one patient. A bright lesion indicates a cyst and a dark lesion a tumour. "
            "What is the diagnosis across both views?")
    if closed:
        return _closed(scans, stem, ["no finding", "cyst", "tumour", "cyst and tumour"], dx, "reasoning")
    where = "; ".join(f"view {i + 1}: {s.caption().rstrip('.').lower()}" for i, s in enumerate(scans))
    return Question(scans, "<image><image>" + stem, f"{dx.capitalize()} ({where}).", "reasoning", "open")


def comparison(rng: random.Random, closed: bool) -> Question:
    """Two studies: which one shows the larger lesion."""
    verdict = rng.choice(("first", "second", "same", "neither"))
    if verdict == "neither":
        sizes = [None, None]
    elif verdict == "same":
        s = rng.randrange(3)
        sizes = [s, s]
    else:
        small, big = sorted(rng.sample(range(3), 2))
        sizes = [big, small] if verdict == "first" else [small, big]
        if rng.random() < 0.3:  # "larger" also when the other study is clear
            sizes[1 if verdict == "first" else 0] = None
    scans = [Scan({rng.choice(QUADRANTS): _lesion(rng, SIZES[s])}) if s is not None else Scan() for s in sizes]
    stem = "Two studies are shown. Which study has the larger lesion?"
    options = ["the first", "the second", "both the same size", "neither has a lesion"]
    correct = {"first": options[0], "second": options[1], "same": options[2], "neither": options[3]}[verdict]
    if closed:
        return _closed(scans, stem, options, correct, "comparison")
    names = [SIZES[s] if s is not None else "none" for s in sizes]
    text = {"first": f"The first study ({names[0]} vs {names[1]}).", "second": f"The second study ({names[1]} vs {names[0]}).",
            "same": f"Both are {names[0]}.", "neither": "Neither study shows a lesion."}[verdict]
    return Question(scans, "<image><image>" + stem, text, "comparison", "open")


def coreference(rng: random.Random, closed: bool) -> Question:
    """Several images, one of them named by its position ("the second image"): where is its lesion."""
    n = rng.choice((2, 3))
    k = rng.randrange(n)
    quads = [rng.choice(QUADRANTS) for _ in range(n)]
    scans = [Scan({quads[i]: _lesion(rng)}) for i in range(n)]
    stem = f"In the {ORDINALS[k]} image, where is the lesion?"
    if closed:
        return _closed(scans, stem, list(QUADRANTS), quads[k], "co-reference")
    return Question(scans, "<image>" * n + stem, f"In the {quads[k]}: a {scans[k].lesions[quads[k]].describe()}.",
                    "co-reference", "open")


def premise(rng: random.Random, negative: bool) -> Question:
    """A MedHallTune-style question on one image whose premise is true (positive) or false (negative)."""
    kind = rng.choice(PREMISES)
    mirror = {"upper left": "upper right", "upper right": "upper left", "lower left": "lower right",
              "lower right": "lower left"}
    if kind == "nonexistent" and negative:
        scan, q = Scan(), rng.choice(QUADRANTS)
        claim = f"The scan shows a lesion in the {q}."
        fix = f"{REJECT}: the scan shows no lesion."
    elif kind == "wrong_side":
        q = rng.choice(QUADRANTS)
        real = mirror[q] if negative else q
        scan = Scan({real: _lesion(rng)})
        claim = f"The scan shows a lesion in the {q}."
        fix = f"{REJECT}: the lesion is in the {real}, not the {q}."
    elif kind == "wrong_size":
        q = rng.choice(QUADRANTS)
        real = _lesion(rng)
        claimed = rng.choice([s for s in SIZES if s != real.size]) if negative else real.size
        scan = Scan({q: real})
        claim = f"The scan shows a {claimed} lesion in the {q}."
        fix = f"{REJECT}: the lesion in the {q} is {real.size}, not {claimed}."
    elif kind == "wrong_count":
        n = rng.choice((1, 2))
        scan = _scan(rng, n)
        q = rng.choice(sorted(scan.lesions))
        claimed = (3 - n if rng.random() < 0.5 else 3) if negative else n
        claim = f"The scan shows {NUMBERS[claimed]} lesion{'s' if claimed > 1 else ''}, one in the {q}."
        fix = f"{REJECT}: the scan shows {NUMBERS[n]} lesion{'s' if n > 1 else ''}, not {NUMBERS[claimed]}."
    else:  # a true existence premise
        q = rng.choice(QUADRANTS)
        scan = Scan({q: _lesion(rng)})
        claim = f"The scan shows a lesion in the {q}."
        fix = ""
    prompt = f"<image>{claim} Is that lesion bright or dark?"
    if negative:
        return Question([scan], prompt, fix, None, "open", None, "negative", kind)
    return Question([scan], prompt, f"It is {scan.lesions[q].intensity}.", None, "open", None, "positive", kind)


GENERATORS = {"temporal": temporal, "reasoning": reasoning, "comparison": comparison, "co-reference": coreference}


def caption_question(rng: random.Random) -> Question:
    """Caption pre-alignment: one scan, its full description."""
    scan = _scan(rng, rng.choice((0, 1, 1, 2, 2, 3)))
    return Question([scan], "<image>Describe the scan.", scan.caption(), None, "open")


def last_image_only(q: Question) -> Question:
    """The single-image baseline's view of a question: only its last image (the text unchanged)."""
    text = q.prompt.replace("<image>", "")
    return Question([q.scans[-1]], "<image>" + text, q.answer, q.ability, q.kind, q.options, q.polarity, q.premise)


def make_questions(n_per_ability: int, seed: int = 0, open_fraction: float = 0.25,
                   n_premise: int | None = None) -> dict[str, list[Question]]:
    """Questions by set: `medmim` (all four abilities, closed and open), `medhall` (positive + negative).

    Args:
        n_per_ability: Questions per ability (a fraction `open_fraction` of them open-ended).
        seed: Random seed; the same seed gives the same questions.
        open_fraction: Share of open-ended questions.
        n_premise: Premise questions, half of them negatives (default: 2 x n_per_ability).
    """
    rng = random.Random(seed)
    medmim = [GENERATORS[a](rng, rng.random() >= open_fraction) for a in ABILITIES for _ in range(n_per_ability)]
    n_premise = 2 * n_per_ability if n_premise is None else n_premise
    medhall = [premise(rng, negative=i % 2 == 1) for i in range(n_premise)]
    return {"medmim": medmim, "medhall": medhall}


def write_questions(questions: dict[str, list[Question]], out: str | Path, image_size: int = 32, seed: int = 0,
                    tsv: bool = False) -> dict[str, Path]:
    """Render the questions' images into `out/images` and write each set in its format.

    Sets named `medhall*` become MedHallTune JSONL (`<name>.jsonl`), the others Med-MIM JSON (`<name>.json`,
    Mantis-style list with `ability`, `question_type`, `options` and `caption` besides the standard fields);
    with `tsv`, the closed questions of `medmim` also go to `medmim.tsv` (VLMEvalKit style, base64 images).
    """
    from PIL import Image

    from duomind.apps.medical.data import Item, write_medhall, write_medmim, write_tsv

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    np_rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {}
    for name, qs in questions.items():
        items = []
        for i, q in enumerate(qs):
            files = []
            for j, scan in enumerate(q.scans):
                rel = f"images/{name}-{i:05d}-{j}.png"
                Image.fromarray(render(scan, image_size, np_rng), mode="L").save(out / rel)
                files.append(str(out / rel))
            items.append(Item(id=f"{name}-{i:05d}", images=files, prompt=q.prompt, answer=q.answer, ability=q.ability,
                              kind=q.kind, options=q.options, polarity=q.polarity, premise=q.premise,
                              caption=" ".join(f"Image {k + 1}: {s.caption()}" for k, s in enumerate(q.scans)),
                              source=f"duomind-synth/{q.ability or q.polarity or 'caption'}"))
        if name.startswith("medhall"):
            paths[name] = write_medhall(items, out / f"{name}.jsonl", relative_to=out)
        else:
            paths[name] = write_medmim(items, out / f"{name}.json", relative_to=out)
        if tsv and name == "medmim":
            paths["tsv"] = write_tsv([it for it in items if it.kind == "closed"], out / "medmim.tsv")
    return paths


def write_dataset(out: str | Path, n_per_ability: int = 100, seed: int = 0, image_size: int = 32,
                  open_fraction: float = 0.25, captions: int = 0, tsv: bool = False) -> dict[str, Path]:
    """Generate and write a benchmark: `medmim.json`, `medhall.jsonl`, `captions.json` (when `captions` > 0),
    `medmim.tsv` (when `tsv`), `images/*.png` and `synth.json` (the settings)."""
    qs = make_questions(n_per_ability, seed, open_fraction)
    if captions:
        rng = random.Random(seed + 7919)
        qs["captions"] = [caption_question(rng) for _ in range(captions)]
    paths = write_questions(qs, out, image_size, seed, tsv)
    (Path(out) / "synth.json").write_text(json.dumps({"n_per_ability": n_per_ability, "seed": seed,
                                                      "image_size": image_size, "open_fraction": open_fraction,
                                                      "captions": captions}, indent=1))
    return paths
