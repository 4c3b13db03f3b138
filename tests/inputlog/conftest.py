"""Fixtures of the input log tests (helpers are in tests/inputlog_support.py)."""
from __future__ import annotations

import pytest

from service.config import InputLogSettings


@pytest.fixture
def settings(tmp_path) -> InputLogSettings:
    return InputLogSettings(dir=tmp_path / "inputlog", queue_size=100)
