"""Multi-view image captions, SpatialLLM's third source (arXiv 2505.12703), attached to the features they show.

SpatialLLM captions street-level and multi-view images with a vision-language model and puts each caption
into the description of the feature it shows (`image_caption`). There are no images or captioner here, so
captions are an input: a JSON list (or {"captions": [...]}) or a CSV of records, each a `caption` plus either
- `feature`: the name (or SSD id, e.g. A12) of the feature the image shows, or
- `lon`, `lat`: the camera position (WGS84), with optional `heading` (view direction, degrees clockwise
  from north) and `fov` (field of view in degrees, default 60).
A camera's caption goes to the nearest area in view within `max_m`, else the nearest point in view (a photo
of a shop shows its building first); lines (streets) are never the subject. Optional `image` names the file.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import shapely

from duomind.apps.spatial import geo


def read_captions(path: str | Path) -> list[dict]:
    """Caption records from a .json or .csv file (see the module docstring), validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the captions file is empty; write a JSON list of {{caption, lon, lat}} records.")
    if path.suffix.lower() == ".csv":
        recs = [dict(r) for r in csv.DictReader(text.splitlines())]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from err
        recs = data.get("captions") if isinstance(data, dict) else data
        if not isinstance(recs, list):
            raise ValueError(f"{path}: expected a list of caption records (or {{\"captions\": [...]}}).")
    out = []
    for n, r in enumerate(recs):
        if not isinstance(r, dict) or not str(r.get("caption") or "").strip():
            raise ValueError(f"{path}: record {n} has no caption; each record needs a 'caption' text.")
        rec = {"caption": " ".join(str(r["caption"]).replace("|", "/").split()), "image": r.get("image")}
        if r.get("feature") not in (None, ""):
            rec["feature"] = str(r["feature"])
        elif r.get("lon") not in (None, "") and r.get("lat") not in (None, ""):
            try:
                rec["lon"], rec["lat"] = float(r["lon"]), float(r["lat"])
                if r.get("heading") not in (None, ""):
                    rec["heading"] = float(r["heading"]) % 360.0
                rec["fov"] = float(r.get("fov") or 60.0)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: record {n}: lon, lat, heading and fov must be numbers ({err}).") from err
            if not (-180 <= rec["lon"] <= 180 and -90 <= rec["lat"] <= 90):
                raise ValueError(f"{path}: record {n}: camera ({rec['lon']}, {rec['lat']}) is not lon/lat (WGS84).")
        else:
            raise ValueError(f"{path}: record {n} says neither which feature it shows ('feature') nor where the "
                             "camera stood ('lon', 'lat'); give one of them.")
        out.append(rec)
    return out


def match(captions: list[dict], names: list[str], ids: list[str], kinds: np.ndarray, metric: np.ndarray, crs,
          max_m: float = 60.0) -> tuple[dict[int, list[str]], list[dict]]:
    """Assign captions to features.

    Args:
        captions: Records from `read_captions`.
        names: Feature names; ids: their SSD ids; kinds: "polygon" | "line" | "point" per feature.
        metric: Feature geometries in the metric CRS `crs`.
        max_m: Farthest a camera may stand from what it shows.

    Returns:
        ({feature index: [captions]}, the records that matched nothing).
    """
    by_key: dict[str, int] = {}
    for i, (nm, fid) in enumerate(zip(names, ids)):
        by_key.setdefault(nm, i)
        by_key[fid] = i
    shown: dict[int, list[str]] = {}
    unmatched: list[dict] = []
    cams = [c for c in captions if "feature" not in c]
    for c in captions:
        if "feature" in c:
            i = by_key.get(c["feature"])
            if i is None:
                unmatched.append(c)
            else:
                shown.setdefault(i, []).append(c["caption"])
    if cams:
        subject = np.flatnonzero(kinds != "line")
        tree = shapely.STRtree(metric[subject])
        x, y = geo.transform_xy([c["lon"] for c in cams], [c["lat"] for c in cams], geo.WGS84, crs)
        pts = shapely.points(x, y)
        for c, pt in zip(cams, pts):
            cand = subject[tree.query(pt, predicate="dwithin", distance=max_m)]
            best = None
            for i in cand:
                d = float(shapely.distance(pt, metric[i]))
                if "heading" in c and d > 0:
                    near = shapely.get_coordinates(shapely.shortest_line(pt, metric[i]))[-1]
                    angle = np.degrees(np.arctan2(near[0] - pt.x, near[1] - pt.y)) % 360.0
                    if abs((angle - c["heading"] + 180.0) % 360.0 - 180.0) > c["fov"] / 2:
                        continue  # out of view
                key = (kinds[i] != "polygon", d, int(i))  # areas first, then the nearest
                if best is None or key < best:
                    best = key
            if best is None:
                unmatched.append(c)
            else:
                shown.setdefault(best[2], []).append(c["caption"])
    if unmatched:
        warnings.warn(f"{len(unmatched)} of {len(captions)} image captions match no feature (no such name, or "
                      f"nothing in view within {max_m:g} m of the camera); they are left out", stacklevel=3)
    return shown, unmatched
