"""A request's images to one contiguous model-input array, decoded in parallel when many.

Pillow and numpy release the interpreter lock while they decode and resample, so the images
of a big request are split into contiguous runs, one per core: the calling thread does the
first run, a small shared thread pool the others. Each image is written straight into its
row of the batch array, so the session pool gets one contiguous array with no stacking copy.
A request of a few images stays on the calling thread: a hand-off would cost more than it
saves.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from service import cpu_placement
from service.errors import InvalidInput, ServiceError

from .containers import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from .pipeline import model_input
from .spec import PreprocessSpec

MIN_RUN = 8  # images per thread below which splitting does not pay
THREADS = os.cpu_count() or 1


class Image(Protocol):
    """One image to prepare (the data plane's ``Instance``): its bytes, and the optional
    crop around (x, y)."""

    data: bytes
    x: float | None
    y: float | None
    crop: float | None


@dataclass(frozen=True)
class Prepared:
    inputs: np.ndarray  # (N, H, W) or (N, H, W, 3) float32, contiguous
    decode_s: float     # the phase's wall time, split between decoding...
    preprocess_s: float  # ...and the rest, in proportion to the work each took


def input_shape(spec: PreprocessSpec) -> tuple[int, ...]:
    """One image's model input shape under ``spec``."""
    return (spec.height, spec.width, 3) if spec.color == "rgb" else (spec.height, spec.width)


class Preparer:
    """Prepares requests' images, with the calling thread and ``threads - 1`` pool threads.

    The pool starts with the first big request (after any daemon or worker fork); ``stop()``
    ends its threads, which would otherwise keep the process from exiting.
    """

    def __init__(self, threads: int = THREADS):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to do: the pool starts when first needed."""

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def prepare(self, images: Sequence[Image], spec: PreprocessSpec, *,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                max_frames: int = DEFAULT_MAX_FRAMES) -> Prepared:
        """Decode and preprocess ``images`` into one array; the first failing image (by
        index) raises, its message prefixed with "Image <i>: " in a batch."""
        started = time.monotonic()
        out = np.empty((len(images), *input_shape(spec)), np.float32)
        work = [(images, spec, out, lo, hi, max_pixels, max_frames)
                for lo, hi in _runs(len(images), self.threads)]
        if len(work) == 1:
            outcomes = [_prepare_run(*work[0])]
        else:
            pool = self._executor()
            futures = [pool.submit(_prepare_run, *args) for args in work[1:]]
            outcomes = [_prepare_run(*work[0])] + [f.result() for f in futures]
        decode_s = sum(o[0] for o in outcomes)
        prep_s = sum(o[1] for o in outcomes)
        for _, _, error in outcomes:  # runs are in index order: the first error is the lowest
            if error is not None:
                raise error
        if len(work) > 1:  # threads overlapped: report the wall time, split as the work was
            wall = time.monotonic() - started
            share = decode_s / (decode_s + prep_s) if decode_s + prep_s > 0 else 0.5
            decode_s, prep_s = wall * share, wall * (1 - share)
        return Prepared(out, decode_s, prep_s)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1),
                                                thread_name_prefix="preprocess",
                                                initializer=cpu_placement.leave_interpreter_cpu)
            return self._pool


def _runs(count: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) index runs, one per thread used (at most ``threads``)."""
    threads = max(1, min(threads, count // MIN_RUN))
    step = -(-count // threads)
    return [(lo, min(lo + step, count)) for lo in range(0, count, step)]


def _prepare_run(images: Sequence[Image], spec: PreprocessSpec, out: np.ndarray, lo: int,
                 hi: int, max_pixels: int, max_frames: int
                 ) -> tuple[float, float, ServiceError | None]:
    """Fill ``out[lo:hi]``; (decode seconds, preprocess seconds, the first error or None)."""
    decode_s = prep_s = 0.0
    for index in range(lo, hi):
        image = images[index]
        started = time.monotonic()
        try:
            out[index], decoding = model_input(image.data, spec, x=image.x, y=image.y,
                                               crop=image.crop, max_pixels=max_pixels,
                                               max_frames=max_frames)
        except ServiceError as exc:  # returned, so the lowest index is the one raised
            if len(images) > 1 and isinstance(exc, InvalidInput):  # say which one
                exc.message = f"Image {index}: {exc.message}"
            return decode_s, prep_s, exc
        decode_s += decoding
        prep_s += time.monotonic() - started - decoding
    return decode_s, prep_s, None
