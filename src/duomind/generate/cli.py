"""`duomind generate`: prompts in, text out, streamed as it is decoded."""

from __future__ import annotations

import sys


def stop_ids(tok) -> list[int]:
    """End-of-turn and end-of-text ids of a tokenizer (those it has)."""
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return sorted(ids)


def generate_cli(checkpoint: str, prompt: str | list[str], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, chat: bool = True, mode: str | None = None,
                 seed: int | None = None, speculative: str | None = None, predictors: str | None = None,
                 draft: str | None = None, k: int | None = None, tree_width: int = 1) -> list[str]:
    """Generate text from a checkpoint with DuoMind's KV-cache decode loop.

    Args:
        checkpoint: A run directory (its latest checkpoint), a step-XXXXXX checkpoint, or a converted model.
        prompt: One prompt, or a list of prompts decoded as one batch.
        max_new_tokens: Tokens to generate per prompt.
        temperature: 0 for greedy; otherwise sampling temperature.
        top_k: Sample only from the k most likely tokens.
        top_p: Nucleus sampling mass.
        chat: Wrap prompts in the chat template (as a user turn).
        mode: Reasoning mode marker for chat prompts: fast, slow or auto.
        seed: Sampling seed.
        speculative: Speculative decoding (one prompt at a time): firp, medusa, lookup or draft. The output
            is the same as without it (greedy: token for token; sampling: in distribution).
        predictors: FIRP / Medusa predictor directory (`duomind speculate train`); default CHECKPOINT/predictors.
        draft: Draft model checkpoint for --speculative draft.
        k: Draft length (default: the predictors' k).
        tree_width: Candidates per draft position (1: a chain; more: a token tree).
    """
    from duomind.generate.decode import generate
    from duomind.tokenizer import chat_prompt, load_tokenizer
    from duomind.train.checkpoint import load_model, resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    model = load_model(checkpoint)
    tok = load_tokenizer(checkpoint)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    ids = [chat_prompt(tok, [{"role": "user", "content": p}], mode=mode) if chat else tok.encode(p) for p in prompts]
    stream = None
    if len(prompts) == 1:
        shown: list[int] = []
        printed = [""]

        def stream(row: int, token: int) -> None:
            shown.append(token)
            text = tok.decode(shown, skip_special_tokens=False)
            sys.stdout.write(text[len(printed[0]):])
            sys.stdout.flush()
            printed[0] = text

    if speculative:
        from duomind.generate.speculate_cli import make_drafter
        from duomind.generate.speculative import speculative_generate

        if predictors is None and speculative in ("firp", "medusa"):
            predictors = str(checkpoint / "predictors")  # where `duomind serve` looks too
        drafter = make_drafter(model, speculative, predictors, draft, k, tree_width)
        out = []
        for p in ids:
            out.append(speculative_generate(model, p, drafter, max_new_tokens, temperature, top_k, top_p,
                                            stop_ids(tok), seed))
            if stream is not None:
                for t in out[-1]:
                    stream(0, t)
    else:
        out = generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_tokens=stop_ids(tok), stream=stream, seed=seed)
    texts = [tok.decode(o, skip_special_tokens=False) for o in out]
    if stream is not None:
        print()
    else:
        for p, t in zip(prompts, texts):
            print(f"> {p}\n{t}\n")
    return texts
