"""Where a run's time goes: named sections accumulated into the active :class:`Timings`, if any.

``with section("network_forward"): ...`` costs nothing when no :class:`Timings` is active; :func:`ddip.reconstruct`
activates one, so every result reports its wall time split into the network's forward and backward passes, the
data-consistency steps (forward and, in adaptation, backward) and the remainder (DDIM updates, Python).
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch

_active: contextvars.ContextVar["Timings | None"] = contextvars.ContextVar("ddip_timings", default=None)


class Timings:
    """Accumulated seconds per section name; use as a context manager to make it the active one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._token = None

    def __enter__(self) -> "Timings":
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.reset(self._token)

    def as_dict(self, total: float | None = None) -> dict[str, float]:
        out = dict(sorted(self.seconds.items()))
        if total is not None:
            out["other"] = max(0.0, total - sum(self.seconds.values()))
        return out


@contextmanager
def section(name: str) -> Iterator[None]:
    """Time the block into the active :class:`Timings` (CUDA-synchronised), or do nothing if none is active."""
    timings = _active.get()
    if timings is None:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.seconds[name] += time.perf_counter() - t0
