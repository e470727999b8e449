"""DuoMind: an open toolkit for efficient LLM reasoners.

Importing the package is cheap (no torch); heavy modules load on first use. After `import duomind`,
`transformers.AutoModelForCausalLM.from_pretrained` loads DuoMind checkpoints: the model registers itself
with the Auto classes as soon as transformers is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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


def lazy_exports(package: str, table: dict[str, str], namespace: dict[str, Any]):
    """Module-level `__getattr__` and `__dir__` that import each public name from its module on first use.

    Packages use it as `__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())`, so importing a
    package stays cheap (no torch, sympy, ...) until a name is actually touched.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Registers DuoMind with transformers' Auto classes right after `transformers` is imported.

    `import duomind` must make `AutoModelForCausalLM.from_pretrained(dir)` work, yet must not import torch
    itself (the simulator and the CLI stay light). So registration waits for transformers to load.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot: let the regular finders locate transformers
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_and_register(module):
                run(module)
                importlib.import_module("duomind.model")

            spec.loader.exec_module = exec_and_register
        return spec


if "transformers" in sys.modules:
    importlib.import_module("duomind.model")
elif not any(isinstance(f, _RegisterWhenTransformersLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
