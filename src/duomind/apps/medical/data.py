"""Datasets: Med-MIM JSON, MedHallTune JSONL and VLMEvalKit-style TSV in, one `Item` list out; validation; writers.

Formats (what the papers and tools publish):
    Med-MIM (arXiv 2505.19031), Mantis-style JSON list:
        {"id", "images": [paths], "conversation": [{"role": "user", "content": "<image><image>Q"},
         {"role": "assistant", "content": "A"}], "source"}   (LLaVA-style "from"/"value" keys also read)
    MedHallTune (arXiv 2502.20780), JSONL: {"question_id", "image", "text", "gpt4_answer", "fig_caption"}
    VLMEvalKit TSV: index, image (base64; several images as a JSON list of base64 strings), question,
        optional A-D options, answer, category.
Optional extra keys DuoMind writes and reads: `ability`, `question_type` (closed | open), `options`,
`category` (positive | negative), `premise`. Image paths are resolved against the data file's folder.
Every problem (missing or unreadable image, wrong number of `<image>` placeholders, missing fields) is
collected with its location, so `duomind med validate` can list them all at once.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "<image>"
ABILITY_NAMES = ("temporal", "reasoning", "comparison", "co-reference")


@dataclass
class Item:
    """One question with its images: a path per image, or the encoded bytes (TSV)."""

    id: str
    images: list[str | bytes]
    prompt: str  # with one PLACEHOLDER per image, where the image goes
    answer: str | None
    ability: str | None = None
    kind: str = "open"  # closed | open
    options: dict[str, str] | None = None
    polarity: str | None = None  # positive | negative (hallucination sets)
    premise: str | None = None
    caption: str | None = None
    source: str | None = None
    fmt: str = "medmim"  # the format it came from: medmim | medhall | tsv


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DataProblems(ValueError):
    """A dataset has problems; `problems` lists every one."""

    def __init__(self, path: str | Path, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} problem(s):\n  {shown}{more}\nFix them, or run "
                         f"`duomind med validate {path}` for the full list.")


def load_image(ref: str | bytes, mode: str = "L"):
    """Open an image (path or encoded bytes) fully, as a PIL image in `mode`; a clear error if it is broken."""
    from PIL import Image, UnidentifiedImageError

    name = ref if isinstance(ref, str) else f"<{len(ref)} encoded bytes>"
    if isinstance(ref, str) and not Path(ref).is_file():
        raise FileNotFoundError(f"image {ref!r} does not exist; check the path (relative paths are resolved "
                                "against the data file's folder).")
    try:
        with Image.open(ref if isinstance(ref, str) else io.BytesIO(ref)) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {name} cannot be read ({err}); it is broken or not an image file. "
                         "Replace it or drop the item.") from err


def count_placeholders(text: str) -> int:
    return text.count(PLACEHOLDER)


def _ability(rec: dict, path: Path) -> str | None:
    if rec.get("ability"):
        return str(rec["ability"])
    hay = f"{rec.get('source', '')} {path.stem}".lower()
    for name in ABILITY_NAMES:
        if name in hay or name.replace("-", "") in hay or name.replace("-", "_") in hay:
            return name
    return None


_CHOICE = re.compile(r"(?:^|\s)([A-D])\.\s+(.+?)(?=\s+[A-D]\.\s|$)")


def _options_from_prompt(prompt: str) -> dict[str, str] | None:
    found = dict(_CHOICE.findall(prompt.replace(PLACEHOLDER, " ")))
    return found if len(found) >= 2 else None


def _check_images(item: Item, where: str, problems: list[Problem], open_images: bool) -> None:
    n = count_placeholders(item.prompt)
    if n != len(item.images):
        problems.append(Problem(where, f"{n} {PLACEHOLDER} placeholder(s) for {len(item.images)} image(s); put "
                                       f"exactly one {PLACEHOLDER} where each image goes"))
    for ref in item.images:
        try:
            if open_images:
                load_image(ref)
            elif isinstance(ref, str) and not Path(ref).is_file():
                raise FileNotFoundError(f"image {ref!r} does not exist")
        except (FileNotFoundError, ValueError) as err:
            problems.append(Problem(where, str(err).split(";")[0]))


def _resolve(ref: object, root: Path) -> str:
    p = Path(str(ref))
    return str(p if p.is_absolute() else root / p)


def read_medmim(path: Path, problems: list[Problem]) -> list[Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        problems.append(Problem(str(path), f"not valid JSON ({err.msg} at line {err.lineno}); Med-MIM data is one "
                                           "JSON list of items"))
        return []
    if not isinstance(data, list):
        problems.append(Problem(str(path), "Med-MIM data must be a JSON list of items"))
        return []
    items = []
    for n, rec in enumerate(data):
        where = f"{path}[{n}]" + (f" (id {rec.get('id')})" if isinstance(rec, dict) and "id" in rec else "")
        if not isinstance(rec, dict) or "conversation" not in rec or "images" not in rec:
            problems.append(Problem(where, "an item needs 'images' and 'conversation'"))
            continue
        turns = [(t.get("role") or t.get("from"), t.get("content", t.get("value"))) for t in rec["conversation"]
                 if isinstance(t, dict)]
        users = [c for r, c in turns if r in ("user", "human") and isinstance(c, str)]
        replies = [c for r, c in turns if r in ("assistant", "gpt") and isinstance(c, str)]
        if not users:
            problems.append(Problem(where, "the conversation has no user turn (role 'user' with 'content')"))
            continue
        if not isinstance(rec["images"], list):
            problems.append(Problem(where, "'images' must be a list of paths"))
            continue
        # placeholders may be spread over several user turns; the first exchange is the question
        prompt = users[0] + "".join(PLACEHOLDER * count_placeholders(u) for u in users[1:])
        item = Item(id=str(rec.get("id", n)), images=[_resolve(i, path.parent) for i in rec["images"]], prompt=prompt,
                    answer=replies[0] if replies else None, ability=_ability(rec, path),
                    kind=rec.get("question_type") or ("closed" if rec.get("options") else "open"),
                    options=rec.get("options") or None, caption=rec.get("caption"), source=rec.get("source"),
                    polarity=rec.get("category"), premise=rec.get("premise"), fmt="medmim")
        if item.kind == "closed" and not item.options:
            item.options = _options_from_prompt(prompt)
        items.append(item)
    return items


def read_medhall(path: Path, problems: list[Problem]) -> list[Item]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(where, f"not valid JSON ({err.msg}); one JSON object per line"))
            continue
        missing = [k for k in ("question_id", "image", "text") if k not in rec]
        if missing:
            problems.append(Problem(where, f"missing field(s) {missing}; MedHallTune records need question_id, "
                                           "image, text (and gpt4_answer for scoring)"))
            continue
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        text = rec["text"]
        if count_placeholders(text) == 0:  # the released files keep the image out of the text
            text = PLACEHOLDER * len(images) + text
        items.append(Item(id=str(rec["question_id"]), images=[_resolve(i, path.parent) for i in images], prompt=text,
                          answer=rec.get("gpt4_answer"), caption=rec.get("fig_caption"), kind="open",
                          polarity=rec.get("category"), premise=rec.get("premise"), ability=rec.get("ability"),
                          source=rec.get("source"), fmt="medhall"))
    return items


def read_tsv(path: Path, problems: list[Problem]) -> list[Item]:
    csv.field_size_limit(sys.maxsize)
    items = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        for n, row in enumerate(reader, 2):
            where = f"{path}:{n}"
            if not row.get("question") or not row.get("image"):
                problems.append(Problem(where, "a row needs 'image' (base64) and 'question'"))
                continue
            raw = row["image"].strip()
            encoded = json.loads(raw) if raw.startswith("[") else [raw]
            try:
                images: list[str | bytes] = [base64.b64decode(e, validate=True) for e in encoded]
            except (binascii.Error, ValueError) as err:
                problems.append(Problem(where, f"image column is not valid base64 ({err})"))
                continue
            options = {k: row[k] for k in "ABCD" if row.get(k)}
            q = row["question"]
            prompt = (q if count_placeholders(q) else PLACEHOLDER * len(images) + q)
            if options:
                prompt += " " + " ".join(f"{k}. {v}" for k, v in options.items())
            items.append(Item(id=str(row.get("index", n)), images=images, prompt=prompt, answer=row.get("answer"),
                              ability=row.get("category") or _ability({}, path), kind="closed" if options else "open",
                              options=options or None, fmt="tsv"))
    return items


READERS = {".json": read_medmim, ".jsonl": read_medhall, ".tsv": read_tsv}


def load(path: str | Path, check_images: bool = True) -> tuple[list[Item], list[Problem]]:
    """Read a dataset in any supported format; return its items and every problem found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist; make synthetic data with "
                                "`duomind med synth OUT`.")
    if path.suffix not in READERS:
        raise ValueError(f"{path}: unknown format {path.suffix!r}; use .json (Med-MIM), .jsonl (MedHallTune) or "
                         ".tsv (VLMEvalKit).")
    problems: list[Problem] = []
    items = READERS[path.suffix](path, problems)
    for item in items:
        _check_images(item, f"{path} (id {item.id})", problems, check_images)
    if not items and not problems:
        problems.append(Problem(str(path), "no items"))
    return items, problems


def load_items(path: str | Path) -> list[Item]:
    """Read a dataset and refuse it (listing every problem) if anything is wrong."""
    items, problems = load(path)
    if problems:
        raise DataProblems(path, problems)
    return items


def split_paths(data: str | list[str]) -> list[str]:
    """File arguments: one path, several joined by commas (a.json,b.jsonl), or a list."""
    return [p for d in ([data] if isinstance(data, str) else data) for p in str(d).split(",") if p]


def validate_cli(data: str | list[str]) -> None:
    """List every problem of Med-MIM JSON, MedHallTune JSONL or VLMEvalKit TSV files; exit 1 if there is one.

    Args:
        data: Data file(s) to check (images are opened, placeholders counted): one path, or several joined by
            commas (a.json,b.jsonl).
    """
    paths = split_paths(data)
    total = 0
    for p in paths:
        items, problems = load(p)
        for pr in problems:
            print(pr)
        total += len(problems)
        print(f"{p}: {len(items)} item(s), {len(problems)} problem(s)")
    if total:
        raise SystemExit(1)


# --- writers ------------------------------------------------------------------------------------------------------

def _rel(ref: str | bytes, root: Path | None) -> str:
    if isinstance(ref, bytes):
        raise ValueError("this item's images are in-memory bytes (from a TSV); write it as TSV instead.")
    if root is None:
        return ref
    try:
        return str(Path(ref).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return ref


def _medmim_record(it: Item, root: Path | None) -> dict:
    rec = {"id": it.id, "images": [_rel(r, root) for r in it.images],
           "conversation": [{"role": "user", "content": it.prompt}, {"role": "assistant", "content": it.answer or ""}],
           "source": it.source or ""}
    for key, value in (("ability", it.ability), ("question_type", it.kind), ("options", it.options),
                       ("category", it.polarity), ("premise", it.premise), ("caption", it.caption)):
        if value is not None:
            rec[key] = value
    return rec


def write_medmim(items: list[Item], path: str | Path, relative_to: Path | None = None,
                 predictions: list[str | None] | None = None) -> Path:
    """Med-MIM JSON (a prediction per item, when given, goes in `prediction`)."""
    recs = [_medmim_record(it, relative_to) for it in items]
    for rec, pred in zip(recs, predictions or []):
        rec["prediction"] = pred
    Path(path).write_text(json.dumps(recs, indent=1, ensure_ascii=False))
    return Path(path)


def write_medhall(items: list[Item], path: str | Path, relative_to: Path | None = None,
                  predictions: list[str | None] | None = None) -> Path:
    """MedHallTune JSONL; with predictions, the answer records `{question_id, image, question, answer}`."""
    lines = []
    for i, it in enumerate(items):
        image = [_rel(r, relative_to) for r in it.images]
        image = image[0] if len(image) == 1 else image
        question = it.prompt.replace(PLACEHOLDER, "") if len(it.images) == 1 else it.prompt
        if predictions is not None:
            rec = {"question_id": it.id, "image": image, "question": question, "answer": predictions[i]}
        else:
            rec = {"question_id": it.id, "image": image, "text": question, "gpt4_answer": it.answer,
                   "fig_caption": it.caption or ""}
            rec |= {k: v for k, v in (("category", it.polarity), ("premise", it.premise)) if v is not None}
        lines.append(json.dumps(rec, ensure_ascii=False))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_tsv(items: list[Item], path: str | Path, predictions: list[str | None] | None = None) -> Path:
    """VLMEvalKit-style TSV: base64 images (a JSON list when several), question, options, answer."""
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        cols = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
        cols += ["prediction"] if predictions is not None else []
        w = csv.DictWriter(fh, cols, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        for i, it in enumerate(items):
            enc = [base64.b64encode(r if isinstance(r, bytes) else Path(r).read_bytes()).decode() for r in it.images]
            q = it.prompt.replace(PLACEHOLDER, "")
            if it.options:
                q = re.split(r"\s+A\.\s", q, maxsplit=1)[0]  # the options get their own columns
            row = {"index": it.id, "image": enc[0] if len(enc) == 1 else json.dumps(enc), "question": q,
                   "answer": (it.answer or "")[:1] if it.options else it.answer or "", "category": it.ability or ""}
            row |= dict(it.options or {})
            if predictions is not None:
                row["prediction"] = predictions[i] or ""
            w.writerow(row)
    return Path(path)


def write_predictions(items: list[Item], predictions: list[str | None], path: str | Path) -> Path:
    """Predictions in the format the items came from (.json Med-MIM, .jsonl MedHallTune, .tsv VLMEvalKit)."""
    fmt = items[0].fmt if items else "medmim"
    if fmt == "tsv":
        return write_tsv(items, path, predictions)
    if fmt == "medhall":
        return write_medhall(items, path, predictions=predictions)
    return write_medmim(items, path, predictions=predictions)
