"""How far each worker's input-log writer has got, in shared memory, for cross-worker feedback.

Feedback may arrive at one worker for a prediction another worker made a moment ago and
has not written yet. Each worker's writer counts in its slot of a small shared file (mapped
into every worker): its pid, the records it has queued and the records it has finished
(written or dropped). A worker that cannot find a request waits until every other worker
has finished what it had queued when the wait began -- or has been replaced (its pid
changed), since a dead worker's queue is gone. The cost on the request path is one
8-byte store.
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

SLOT = struct.Struct("=qqq")  # pid, queued seq, done seq
POLL_S = 0.01


class WriterProgress:
    """Slot ``slot`` of ``count`` in ``run_dir/writers.bin``."""

    def __init__(self, run_dir: Path, slot: int, count: int):
        path = Path(run_dir) / "writers.bin"
        size = SLOT.size * count
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.slot, self.count = slot, count
        self._offset = slot * SLOT.size
        SLOT.pack_into(self._map, self._offset, os.getpid(), 0, 0)

    # this worker's writer
    def queued(self, seq: int) -> None:
        struct.pack_into("=q", self._map, self._offset + 8, seq)

    def done(self, seq: int) -> None:
        struct.pack_into("=q", self._map, self._offset + 16, seq)

    # any worker
    def _others(self) -> list[tuple[int, int, int, int]]:
        return [(slot, *SLOT.unpack_from(self._map, slot * SLOT.size))
                for slot in range(self.count) if slot != self.slot]

    def others_behind(self) -> bool:
        return any(done < queued for _, _, queued, done in self._others())

    def wait_for_others(self, deadline: float) -> bool:
        """Until every other worker has finished what it had queued now; False at ``deadline``."""
        targets = {slot: (pid, queued) for slot, pid, queued, done in self._others()
                   if done < queued}
        while targets:
            for slot, pid, _, done in self._others():
                if slot in targets and (pid != targets[slot][0] or done >= targets[slot][1]):
                    del targets[slot]
            if not targets:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True
