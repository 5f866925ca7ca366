"""Names a package exports but imports on first use (PEP 562), so ``import raydistill`` (and
every process that unpickles one raydistill function: a Ray worker, a Ray Data actor) pays only
for the modules it touches, not for torch, transformers and Ray Data all at once.

A base module: it imports nothing of raydistill.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each name to the module
    that defines it; the first access imports that module and keeps the value."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
