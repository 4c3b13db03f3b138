"""What every property-based test shares: one seed per run, the committed database of found
examples, and the mutated-real-image strategy.

``FUZZ_SEED`` (default: a fixed value) seeds every generator, hypothesis's and schemathesis's,
so a run is reproducible: the seed is printed in pytest's header and beside every failure.
Failing examples are saved under ``tests/fuzz-examples/`` (hypothesis's directory database,
kept in git): commit what a run adds there, and every later run replays it first.
"""
from __future__ import annotations

import os

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from support import REPO

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
EXAMPLES_DIR = REPO / "tests" / "fuzz-examples"


class KeptExamples(ExampleDatabase):
    """A directory database that never forgets: hypothesis deletes an example once it passes
    (the bug is fixed), but a committed example must keep guarding against its bug."""

    def __init__(self, path: str):
        super().__init__()
        self._directory = DirectoryBasedExampleDatabase(path)

    def save(self, key: bytes, value: bytes) -> None:
        self._directory.save(key, value)

    def fetch(self, key: bytes):
        return self._directory.fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        pass

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self._directory.save(dest, value)


DATABASE = KeptExamples(str(EXAMPLES_DIR))
REPLAY = f"replay this run with FUZZ_SEED={SEED}; saved examples replay from {EXAMPLES_DIR}"


def fuzz_settings(max_examples: int) -> settings:
    """Seeded, database-backed, and blind to the clock: no deadline on a shared machine."""
    return settings(max_examples=max_examples, deadline=None, database=DATABASE,
                    derandomize=False, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def seeded(test):
    """``@hypothesis.seed(SEED)``: the run's seed, whatever profile is loaded (CI's too)."""
    return hypothesis.seed(SEED)(test)


@st.composite
def mutated_image(draw, seeds: list[bytes], max_cut: int = 256, max_junk: int = 64) -> bytes:
    """A real image with bytes flipped, a slice cut out, junk appended, or truncated."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data) - 1))
        del data[start:start + draw(st.integers(0, max_cut))]
    if max_junk and draw(st.booleans()):
        data += draw(st.binary(max_size=max_junk))
    return bytes(data[:draw(st.integers(0, len(data)))])
