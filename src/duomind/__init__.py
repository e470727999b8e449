"""DuoMind: an open toolkit for efficient LLM reasoners.

Importing the package is cheap; heavy modules load on first use. Importing `duomind` also registers
the DuoMind model with `transformers.AutoConfig` / `AutoModelForCausalLM` the first time the model
module loads (see `duomind.model`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ModelConfig": "duomind.config",
    "DuoMind": "duomind.model",
    "DuoMindConfig": "duomind.model",
    "KVCache": "duomind.model",
    "generate": "duomind.generate",
    "load_tokenizer": "duomind.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duomind' has no attribute {name!r}")


def _register_with_transformers() -> None:
    """Make `AutoModelForCausalLM.from_pretrained(dir)` work for DuoMind checkpoints after `import duomind`."""
    try:
        import transformers  # noqa: F401
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return
    importlib.import_module("duomind.model")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
