"""Which worker a process is: handed by the parent to each child it forks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Worker:
    """One serving process of a cluster (``serve --workers N``)."""

    slot: int        # 0..count-1; a replacement takes over its predecessor's slot
    count: int       # workers in the cluster
    run_dir: Path    # shared by the cluster's processes (board, metrics, shared limits)
    generation: int  # 0 for the slot's first process, +1 for each replacement

    @property
    def name(self) -> str:
        """What ``X-Served-By`` says: stable per slot, new per replacement."""
        return f"worker-{self.slot}.{self.generation}"
