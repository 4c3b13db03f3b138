"""bench/sections.py: each benchmark replaces only its own section of RESULTS.md."""
from __future__ import annotations

from bench import run as bench_run
from bench import sections


def test_a_rerun_replaces_its_section_and_a_full_rewrite_keeps_it(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n")
    sections.write_section(path, "soak", "old figures")
    sections.write_section(path, "fairness", "flood figures")
    sections.write_section(path, "soak", "new figures")
    text = path.read_text()
    assert "old figures" not in text and text.count("<!-- soak -->") == 1
    assert text.index("new figures") < text.index("flood figures")  # replaced in place
    rewritten = bench_run.keep_marked_sections("# Benchmark results\n\nfresh numbers\n", path)
    assert "fresh numbers" in rewritten and "new figures" in rewritten
    assert "flood figures" in rewritten and rewritten.count("<!-- /soak -->") == 1
