"""`duomind serve` (OpenAI-compatible HTTP server) and `duomind chat` (terminal chat) over one engine."""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# The embedded default model (trained by recipes/reasoner/default.yaml) ships here.
DEFAULT_MODEL = Path(__file__).resolve().parents[3] / "assets" / "duomind-reasoner"


def default_checkpoint(checkpoint: str | None) -> Path:
    """The checkpoint to serve: the one given, else the embedded default model."""
    if checkpoint:
        return Path(checkpoint)
    if (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL
    raise FileNotFoundError(f"no checkpoint given and the embedded default model is not built yet ({DEFAULT_MODEL}); "
                            "pass one, e.g. `duomind serve runs/reasoner` after "
                            "`duomind reasoner train --config recipes/reasoner/default.yaml` (which builds it).")


def load_engine(checkpoint: str | None, max_batch: int = 16, max_waiting: int = 64, context_len: int | None = None,
                threads: int | None = None, predictors: str | None = None, think_threshold: float | None = None):
    """Load a checkpoint (a run directory or a step-XXXXXX one) and start an engine on it.

    FIRP predictors (or Medusa heads) from `duomind speculate train` are used for speculative steps when
    given, or when the checkpoint directory holds them in `predictors/`; `predictors="none"` turns them off.
    Auto mode's think threshold is `think_threshold`, else the checkpoint's calibrated `router.json` if any.
    """
    import torch

    from duomind.reasoner.router import check_threshold, read_threshold
    from duomind.serve.engine import Engine
    from duomind.tokenizer import load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    if think_threshold is not None:
        check_threshold(think_threshold, "--think_threshold")  # before the model loads
    if threads:
        torch.set_num_threads(threads)
    path = resolve_checkpoint(default_checkpoint(checkpoint))
    threshold = read_threshold(path) if think_threshold is None else think_threshold
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(path, device=device)
    drafter = None
    beside = path / "predictors"
    if predictors == "none":
        pass
    elif predictors or (beside / "drafter.json").is_file():
        from duomind.generate.drafters import predictor_drafter

        drafter = predictor_drafter(model, predictors or beside)
    return Engine(model, load_tokenizer(path), max_batch=max_batch, max_waiting=max_waiting, context_len=context_len,
                  drafter=drafter, think_threshold=threshold), path


def serve_cli(checkpoint: str | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
              model_name: str | None = None, max_batch: int = 16, max_waiting: int = 64,
              context_len: int | None = None, max_tokens: int | None = None, max_body_bytes: int = 1 << 20,
              mode: str = "slow", temperature: float = 0.0, repair: bool = True, threads: int | None = None,
              predictors: str | None = None, think_threshold: float | None = None) -> None:
    """Serve a DuoMind model over an OpenAI-compatible API (chat and text completions, streaming).

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded model in assets/duomind-reasoner).
        host: Interface to listen on.
        port: TCP port.
        api_key: Bearer key required on every route but /health (default: $DUOMIND_API_KEY; unset: none).
        model_name: Model id clients send (default: the checkpoint directory's name).
        max_batch: Sequences decoded together (continuous batching slots).
        max_waiting: Requests that may queue for a slot; beyond that the server answers 429.
        context_len: Longest prompt + max_tokens (default: the model's max_position_embeddings).
        max_tokens: Largest max_tokens a request may ask for (default: the context length).
        max_body_bytes: Largest request body.
        mode: Reasoning mode of chats that ask for none: fast, slow or auto.
        temperature: Temperature of requests that give none (0: greedy).
        repair: Repetition self-repair in thinking spans.
        threads: torch intra-op threads.
        predictors: FIRP predictors from `duomind speculate train` (default: CHECKPOINT/predictors if there):
            speculative steps while one greedy request runs alone; "none" turns them off.
        think_threshold: Auto mode thinks when the model gives `<think>` at least this probability (default: the value
            calibrated in CHECKPOINT/router.json if there, else when `<think>` is its most likely first token).
    """
    import uvicorn

    from duomind.reasoner.control import RepairConfig
    from duomind.serve.server import create_app
    from duomind.tokenizer import MODES

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is not one of {list(MODES)}.")
    engine, path = load_engine(checkpoint, max_batch, max_waiting, context_len, threads, predictors, think_threshold)
    name = model_name or (Path(checkpoint).resolve().name if checkpoint else DEFAULT_MODEL.name)
    key = api_key or os.environ.get("DUOMIND_API_KEY") or None
    app = create_app(engine, name, api_key=key, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens,
                     default_mode=mode, default_temperature=temperature, repair=RepairConfig() if repair else None)
    print(f"serving {path} as {name!r} on http://{host}:{port}/v1 ({'API key required' if key else 'no API key'}; "
          f"{engine.max_batch} slots, context {engine.context_len}"
          f"{', speculative drafts' if engine.speculation else ''})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        engine.close()


HELP = ("/fast /slow /auto  switch mode · /think /no_think /auto_think inside a message for one turn · "
        "/reset  new conversation · /exit  quit")


def chat_session(engine, lines: Iterable[str], console, mode: str = "slow", max_tokens: int = 256,
                 temperature: float = 0.0, prompt: Callable[[str], None] | None = None) -> list[dict]:
    """Run a chat over `lines` (user inputs), printing streamed replies to a rich console; returns the history.

    Thinking is printed dimmed, the answer plainly; the mode chosen is shown after each reply.
    """
    from duomind.reasoner.control import RepairConfig, ThinkingControl
    from duomind.reasoner.modes import resolve_mode
    from duomind.serve.engine import SamplingParams
    from duomind.tokenizer import MODES, THINK, chat_prompt, special_ids

    ids = special_ids(engine.tok)
    history: list[dict] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        command = text.lower()
        if command in ("/exit", "/quit"):
            break
        if command.lstrip("/") in MODES and command.startswith("/"):
            mode = command[1:]
            console.print(f"[bold]mode: {mode}[/bold]")
            continue
        if command == "/reset":
            history = []
            console.print("[bold]new conversation[/bold]")
            continue
        if command in ("/help", "/?"):
            console.print(HELP)
            continue
        try:
            messages, choice = resolve_mode([*history, {"role": "user", "content": text}], default=mode)
            use = choice.mode if ids.get(THINK) is not None else None
            prompt_ids = chat_prompt(engine.tok, messages, mode=use)
            room = engine.context_len - len(prompt_ids)
            if room < 1:
                console.print("[red]the conversation fills the context; /reset to start a new one[/red]")
                continue
            out: queue.Queue = queue.Queue()
            control = ThinkingControl(use, ids, choice.budget, RepairConfig(), engine.think_threshold) if use else None
            engine.submit(prompt_ids, SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature),
                          control, out.put)
        except ValueError as err:
            console.print(f"[red]{err}[/red]")
            continue
        answer, thinking = [], False
        while True:
            d = out.get()
            if d.reasoning:
                if not thinking:
                    console.print("[dim]thinking: [/dim]", end="")
                    thinking = True
                console.print(d.reasoning, style="dim", end="", markup=False, highlight=False)
            if d.content:
                if thinking:
                    console.print()
                    thinking = False
                console.print(d.content, end="", markup=False, highlight=False)
                answer.append(d.content)
            if d.finish_reason:
                break
        console.print()
        note = "error: " + d.error if d.finish_reason == "error" else f"{d.mode or 'plain'} · {d.completion_tokens} tokens"
        console.print(f"[dim]({note})[/dim]", highlight=False)
        history = messages + [{"role": "assistant", "content": "".join(answer)}]
    return history


def chat_cli(checkpoint: str | None = None, mode: str = "slow", max_tokens: int = 256, temperature: float = 0.0,
             threads: int | None = None, predictors: str | None = None, think_threshold: float | None = None) -> None:
    """Chat with a DuoMind model in the terminal: streaming, thinking shown dimmed, /fast /slow /auto to switch.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded model in assets/duomind-reasoner).
        mode: Starting mode: fast, slow or auto.
        max_tokens: Most tokens per reply (thinking included).
        temperature: 0 for greedy.
        threads: torch intra-op threads.
        predictors: FIRP predictors (default: CHECKPOINT/predictors if there) for speculative decoding; "none":
            without.
        think_threshold: Auto mode thinks when the model gives `<think>` at least this probability (default: the value
            calibrated in CHECKPOINT/router.json if there, else when `<think>` is its most likely first token).
    """
    from rich.console import Console

    from duomind.tokenizer import MODES

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is not one of {list(MODES)}.")
    engine, path = load_engine(checkpoint, max_batch=1, threads=threads, predictors=predictors,
                               think_threshold=think_threshold)
    console = Console()
    console.print(f"[bold]DuoMind chat[/bold] · {path} · mode {mode}\n{HELP}")

    def inputs():
        while True:
            try:
                yield console.input("[bold green]> [/bold green]")
            except (EOFError, KeyboardInterrupt):
                return

    try:
        chat_session(engine, inputs() if sys.stdin.isatty() else (line for line in sys.stdin), console, mode=mode,
                     max_tokens=max_tokens, temperature=temperature)
    finally:
        engine.close()
