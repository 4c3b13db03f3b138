"""tests/access/test_rate_limit.py as a module of its own, for the other backends' tests to run its limiter
tests (and helpers) on their store: ``behaviour(name)`` -> (the module, its limiter tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

SOURCE = Path(__file__).parent / "access" / "test_rate_limit.py"


def behaviour(name: str) -> tuple[ModuleType, list[Callable]]:
    """A fresh copy named ``name`` (each backend's monkeypatching stays its own), and its
    tests that build a ``RateLimiter`` (what a backend swaps for its own)."""
    spec = importlib.util.spec_from_file_location(name, SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [test for key, test in sorted(vars(module).items())
             if key.startswith("test_") and "RateLimiter" in test.__code__.co_names]
    return module, tests
