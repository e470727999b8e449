"""`duomind spatial describe | ask | bench`: thin calls into the spatial app."""

from __future__ import annotations

import json
from pathlib import Path


def describe_cli(inputs: str | list[str], out: str = "ssd.json", cloud: str | None = None, crs: str | None = None, cloud_crs: str | None = None,
                 control: str | None = None, max_relations: int = 5, topology_m: float = 50.0,
                 text: str | None = None, budget: int = 2000, plot: str | None = None,
                 synthetic: bool = False, workers: int = 1, captions: str | None = None) -> dict:
    """Build the structured scene description (SSD JSON) of urban data (SpatialLLM, arXiv 2505.12703).

    Args:
        inputs: GeoJSON, .osm, .shp, .csv points and point clouds (.ply, .txt, .las): one path, several
            joined by commas (a.osm,b.csv), or a list ['a.osm', 'b.ply'].
        out: Where the SSD JSON goes.
        cloud: A point cloud to add (same as listing it among the inputs).
        crs: CRS of vector inputs that name none (e.g. EPSG:3857); default lon/lat.
        cloud_crs: CRS of the point cloud's x, y; default the scene's UTM zone.
        control: CSV of control points `cloud_x,cloud_y,map_x,map_y` (map in the scene's UTM) to align the cloud.
        captions: Image captions (JSON list or CSV: `caption` plus `feature`, or camera `lon`, `lat`
            [`heading`, `fov`]) to attach to the features they show as `image_caption`.
        max_relations: "3D Spatial" relations per feature.
        topology_m: Buffer of the topology lists in metres.
        text: Also write the compact text rendering here.
        budget: Token budget of the text rendering.
        plot: Also write a PNG map of the features and relations here.
        synthetic: Write a synthetic city (GeoJSON, .osm, .shp, .csv, .ply, captions) into the directory
            given as `inputs` and describe it.
        workers: Threads for the description's independent stages (2 on an otherwise idle 2-core machine).
    """
    import numpy as np

    from duomind.apps.spatial import readers, ssd

    inputs = [p for p in (inputs.split(",") if isinstance(inputs, str) else inputs or []) if p]
    if synthetic:
        from duomind.apps.spatial.city import make_city, write_city

        if len(inputs) != 1:
            raise ValueError("--synthetic true takes one input: the directory to write the city into.")
        target = inputs[0]
        paths = write_city(make_city(), target)
        inputs = [str(paths["geojson"]), str(paths["ply"])]
        cloud_crs = cloud_crs or json.loads(paths["truth"].read_text())["crs"]
        captions = captions or str(paths["captions"])
        print(f"wrote a synthetic city to {target}: {', '.join(p.name for p in paths.values())}")
    if cloud:
        inputs.append(cloud)
    if not inputs:
        raise ValueError("no inputs: pass files to describe, or DIR --synthetic true for a synthetic city.")
    scene = readers.read(inputs, crs=crs, cloud_crs=cloud_crs)
    ctrl = None
    if control:
        pts = np.loadtxt(control, delimiter=",", ndmin=2, skiprows=1)
        if pts.shape[1] != 4:
            raise ValueError(f"{control}: control points need 4 columns cloud_x,cloud_y,map_x,map_y; got {pts.shape[1]}.")
        ctrl = (pts[:, :2], pts[:, 2:])
    caps = None
    if captions:
        from duomind.apps.spatial.captions import read_captions

        caps = read_captions(captions)
    desc = ssd.describe(scene, max_relations=max_relations, topology_m=topology_m, cloud_control=ctrl,
                        workers=workers, captions=caps)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(desc, ensure_ascii=False))
    st = desc["stats"]["features"]
    print(f"wrote {out}: {st['polygons']} polygons, {st['lines']} lines, {st['points']} points")
    if text:
        from duomind.apps.spatial.render import render

        r = render(desc, budget=budget)
        Path(text).write_text(r.text)
        print(f"wrote {text}: {r.tokens} tokens, {len(r.omitted)} features left out")
    if plot:
        from duomind.apps.spatial.plot import plot_map

        plot_map(desc, plot)
        print(f"wrote {plot}")
    return desc


def _load_ssd(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no scene description at {path!r}; make one with `duomind spatial describe`.")
    try:
        ssd = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}); regenerate it with `duomind spatial describe`.") from err
    if not isinstance(ssd, dict) or not {"polygons", "lines", "points", "stats"} <= ssd.keys():
        raise ValueError(f"{path}: not a scene description (needs polygons, lines, points, stats).")
    return ssd


def ask_cli(ssd: str, question: str, llm: str | None = None, model: str = "default", task: str = "perception",
            budget: int = 2000, max_tokens: int = 512, api_key_env: str = "OPENAI_API_KEY",
            show_prompt: bool = False) -> str:
    """Ask an LLM about a scene: the description is rendered within the budget into the prompt.

    Args:
        ssd: Scene description JSON from `duomind spatial describe`.
        question: The question (features named in it are rendered first).
        llm: http(s) URL of an OpenAI-compatible API (e.g. http://localhost:8000/v1) or a DuoMind checkpoint.
        model: Model name for the HTTP API.
        task: perception, site_selection, safety, ecology, traffic or planning (the prompt template).
        budget: Token budget of the rendered description.
        max_tokens: Longest reply.
        api_key_env: Environment variable holding the API key, if the endpoint needs one.
        show_prompt: Print the prompt too.
    """
    from duomind.apps.spatial.ask import backend, build_prompt

    if not llm:
        raise ValueError("no LLM given: pass --llm http://HOST/v1 (OpenAI-compatible, with --model) or --llm CHECKPOINT_DIR.")
    desc = _load_ssd(ssd)
    prompt, r = build_prompt(desc, question, task=task, budget=budget)
    if show_prompt:
        print(prompt + "\n" + "-" * 60)
    reply = backend(llm, model, api_key_env, max_tokens)([prompt])[0]
    if reply is None:
        raise RuntimeError(f"the LLM at {llm} gave no answer (see the warning above); check the URL and model.")
    print(reply)
    print(f"\n({r.tokens} description tokens, {len(r.omitted)} features left out)")
    return reply


def bench_cli(ssd: str, llm: str = "rule", model: str = "default", per_category: int = 20, budget: int = 2000,
              seed: int = 0, with_description: bool = True, out: str | None = None, max_tokens: int = 64,
              api_key_env: str = "OPENAI_API_KEY") -> dict:
    """Generate perception questions with exact answers from an SSD, ask a backend, score by category.

    Args:
        ssd: Scene description JSON.
        llm: http(s) URL of an OpenAI-compatible API, a DuoMind checkpoint directory, or `rule` for the
            rule-based reader (an upper bound of what the rendered text holds).
        model: Model name for the HTTP API.
        per_category: Questions per category (distance, direction, poi, route, grounding).
        budget: Token budget of each rendered description.
        seed: Question sampling seed.
        with_description: false asks without the description (what the model knows without it).
        out: Write questions, replies and scores here (JSON).
        max_tokens: Longest reply.
        api_key_env: Environment variable holding the API key.
    """
    from duomind.apps.spatial import questions as Q
    from duomind.apps.spatial.ask import backend, build_prompt

    desc = _load_ssd(ssd)
    qs = Q.generate(desc, per_category=per_category, seed=seed)
    prompts = []
    for q in qs:
        if with_description:
            prompts.append(build_prompt(desc, q.prompt(), budget=budget, entities=q.entities)[0])
        else:
            prompts.append(q.prompt())
    if llm == "rule":
        replies = [Q.rule_answer(q, p) or "" for q, p in zip(qs, prompts)]
    else:
        replies = backend(llm, model, api_key_env, max_tokens)(prompts)
    choices = [Q.parse_choice(r) for r in replies]
    result = Q.score(qs, choices)
    for cat, acc in sorted(result["accuracy_by_category"].items()):
        print(f"{cat:10s} {acc:6.1%}")
    print(f"{'all':10s} {result['accuracy']:6.1%}  ({result['n']} questions, {result['unanswered']} unanswered)")
    if out:
        rows = [{"id": q.id, "category": q.category, "question": q.prompt(), "answer": q.answer, "reply": r,
                 "choice": c} for q, r, c in zip(qs, replies, choices)]
        Path(out).write_text(json.dumps({**result, "llm": llm, "budget": budget, "rows": rows}, indent=1))
        print(f"wrote {out}")
    return result
