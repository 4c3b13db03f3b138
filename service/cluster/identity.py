"""Which worker this process is, when it is one: read from the environment the parent sets.

The parent (``cluster/supervisor.py``) sets these before a worker loads anything; a process
started any other way (``serve`` with one worker, tests, the CLI) is not a worker and every
caller falls back to its single-process behaviour.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SLOT, COUNT, RUN_DIR, GENERATION = ("DIGITS_WORKER_SLOT", "DIGITS_WORKERS", "DIGITS_RUN_DIR",
                                    "DIGITS_WORKER_GENERATION")


@dataclass(frozen=True)
class Worker:
    """One serving process of a cluster."""

    slot: int        # 0..count-1; a replacement takes over its predecessor's slot
    count: int       # workers in the cluster
    run_dir: Path    # shared by the cluster's processes (board, metrics, shared limits)
    generation: int  # 0 for the slot's first process, +1 for each replacement

    @property
    def name(self) -> str:
        """What ``X-Served-By`` says: stable per slot, new per replacement."""
        return f"worker-{self.slot}.{self.generation}"

    def environ(self) -> dict[str, str]:
        return {SLOT: str(self.slot), COUNT: str(self.count), RUN_DIR: str(self.run_dir),
                GENERATION: str(self.generation)}


def this_worker() -> Worker | None:
    """This process's identity, or None when it is not a cluster worker."""
    if SLOT not in os.environ:
        return None
    return Worker(int(os.environ[SLOT]), int(os.environ[COUNT]), Path(os.environ[RUN_DIR]),
                  int(os.environ.get(GENERATION, "0")))
