"""Sections of bench/RESULTS.md owned by one benchmark each, between HTML comment markers.

``run.py`` rewrites the main part; ``soak.py``, ``fairness.py`` and the others replace only
their own ``<!-- name -->`` ... ``<!-- /name -->`` block, so each can be re-run alone.
"""
from __future__ import annotations

import re
from pathlib import Path


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->\n?", re.S)


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put ``markdown`` in section ``name`` of ``path``, replacing it or appending it."""
    block = f"<!-- {name} -->\n{markdown.rstrip()}\n<!-- /{name} -->\n"
    text = path.read_text() if path.exists() else ""
    if _pattern(name).search(text):
        text = _pattern(name).sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def marked_sections(text: str) -> str:
    """Every marked section in ``text``, in order (what a full rewrite must keep)."""
    blocks = re.findall(r"<!-- ([\w-]+) -->\n.*?<!-- /\1 -->\n?", text, re.S)
    return "".join(_pattern(name).search(text).group(0) for name in blocks)
