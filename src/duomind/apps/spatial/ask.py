"""Prompting an LLM with a scene description: templates for perception and advanced tasks, and backends.

Backends are any `complete(prompts) -> replies` callable; `backend()` builds one for a local DuoMind
checkpoint (DuoMind's KV-cache decode loop) or any OpenAI-compatible endpoint, reusing the judge's
clients (`duomind.rewards.judge`: timeouts, retries with backoff, bounded concurrency).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from duomind.apps.spatial.render import Rendered, count_tokens, render

Complete = Callable[[list[str]], list[str]]

PREAMBLE = """You are an urban spatial analyst. Below is a structured description of a scene, built from map
data and point clouds. Each feature line reads: [id] name (class) size @lon,lat | rel: target bearing
distance (the target lies in that direction from this feature) | near: closest POI/road | 50m: what lies
within 50 m. Use only this description; say so when it lacks what is needed."""

TASKS: dict[str, str] = {
    "perception": "Answer the multiple-choice question from the description.",
    "site_selection": ("Recommend the best site for what is asked. Weigh access (roads, bus stops), nearby POIs, "
                       "land use, green space and conflicts; name the feature ids you choose and why; list two "
                       "alternatives."),
    "safety": ("Assess safety for what is asked: traffic exposure (primary roads, intersections), emergency access "
               "(hospitals, road connectivity, dead ends), crowding and water hazards; cite feature ids."),
    "ecology": ("Assess the ecological state: green and water coverage, fragmentation of green areas, proximity of "
                "built areas to water, and where new green space would help most; cite feature ids."),
    "traffic": ("Analyse traffic: road density and connectivity (beta and gamma indices), intersections, dead "
                "ends, POIs that attract trips and likely bottlenecks; propose changes; cite feature ids."),
    "planning": ("Give urban-planning advice for what is asked: land-use mix, service coverage (POIs per km2), "
                 "building heights and density, gaps in amenities and where to fill them; cite feature ids."),
}


def build_prompt(ssd: dict, question: str, task: str = "perception", budget: int = 2000,
                 entities: list[str] = (), count: Callable[[str], int] = count_tokens,
                 stats: bool = True) -> tuple[str, Rendered]:
    """The prompt: preamble, the description rendered within `budget` tokens, the task, the question."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {sorted(TASKS)}.")
    r = render(ssd, budget=budget, question=question, entities=entities, count=count, stats=stats)
    return f"{PREAMBLE}\n\nSCENE DESCRIPTION:\n{r.text}\n\nTASK: {TASKS[task]}\n\nQUESTION: {question}", r


def backend(llm: str, model: str = "default", api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 512,
            timeout_s: float = 120.0, retries: int = 3, concurrency: int = 4) -> Complete:
    """A backend: `llm` is an http(s) URL of an OpenAI-compatible API, or a DuoMind checkpoint directory."""
    from duomind.rewards.judge import http_backend, local_backend

    if llm.startswith(("http://", "https://")):
        return http_backend(llm, model, os.environ.get(api_key_env), timeout_s, retries, concurrency, max_tokens)
    if not os.path.isdir(llm):
        raise FileNotFoundError(f"--llm {llm!r} is neither an http(s) URL nor a checkpoint directory; pass e.g. "
                                "http://localhost:8000/v1 --model NAME, or a DuoMind checkpoint made by `duomind train`.")
    return local_backend(llm, max_new_tokens=max_tokens)
