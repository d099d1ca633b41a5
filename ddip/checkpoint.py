"""Resumable reconstructions: the whole sampling state, saved atomically every few steps.

A checkpoint holds what the next step needs to continue bit-exactly — the diffusion state ``x``, the step index, the
solver's carried state (ADMM ``z``/``u``), every RNG state, and for adapted methods the LoRA parameters, the
optimiser state and the adaptation counters — plus the run's settings, which a resumed run must repeat exactly.
Files are written with ``torch.save`` and read with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings
and containers only).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from ddip import distributed
from ddip.errors import DdipError
from ddip.io import atomic_path, check_same_settings
from ddip.signals import Interrupted, StopRequest
from ddip.solvers import solve

CHECKPOINT_EVERY = 5  # steps between checkpoints: at most this many are lost to kill -9

#: The persistence hook a solve calls after step ``i`` of ``n_total`` with a function that builds its payload (built
#: only when saved); :class:`Checkpointer` is the one that writes files, :func:`nested` wraps one for an inner solve.
Persist = Callable[[int, int, Callable[[], dict]], None]


class Checkpointer:
    """The persistence hook of a reconstruction (:data:`Persist`): saves the payload to ``path`` every ``every``
    steps; :meth:`load` reads it back for ``--resume`` (the caller passes it to the method as ``resume``).

    With a :class:`~ddip.signals.StopRequest` it also saves after the step during which SIGTERM or SIGINT arrived,
    and the run then stops with :class:`~ddip.signals.Interrupted`.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, *, every: int = CHECKPOINT_EVERY,
                 stop: StopRequest | None = None):
        if every < 1:
            raise DdipError(f"checkpoint interval must be >= 1 step, got {every}")
        self.path, self.every, self.stop = Path(path), int(every), stop
        self.settings_dict = settings
        self.settings = json.dumps(settings, sort_keys=True, default=str)

    def sibling(self, suffix: str) -> "Checkpointer":
        """A checkpointer beside this one, for one sample or one rank of the same run."""
        return Checkpointer(self.path.with_name(f"{self.path.stem}.{suffix}{self.path.suffix}"), self.settings_dict,
                            every=self.every, stop=self.stop)

    def due(self, i: int) -> bool:
        return (i + 1) % self.every == 0

    def __call__(self, i: int, n_total: int, payload: Callable[[], dict]) -> None:
        """The persistence hook (:data:`Persist`) after step ``i`` of ``n_total``: saves ``payload()`` when due or
        when a signal asked to stop, then stops the run with :class:`~ddip.signals.Interrupted`. Nothing is saved
        after the last step (the run then finishes and writes its result)."""
        if i == n_total - 1:
            return
        stop = self.stop_requested()
        if stop or self.due(i):
            self.save(payload())
        if stop:
            signum = self.stop.signum or signal.SIGTERM
            raise Interrupted(f"{signal.Signals(signum).name} received: stopped after sampling step {i + 1} of "
                              f"{n_total} with the whole state saved in {self.path}; run the same command "
                              f"with --resume to continue", signum)

    def stop_requested(self) -> bool:
        """Whether a signal asked the run to stop (on any rank: every rank then stops at the same step)."""
        return self.stop is not None and distributed.any_flag(self.stop.requested)[0]

    def save(self, payload: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**payload, "settings": self.settings}, tmp)

    def load(self) -> dict | None:
        """The saved payload, or None when there is no checkpoint; a mismatched or corrupt one is an error."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DdipError(f"{self.path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
        if not isinstance(payload, dict) or "settings" not in payload:
            raise DdipError(f"{self.path}: not a ddip reconstruction checkpoint")
        check_same_settings(json.loads(payload["settings"]), json.loads(self.settings), str(self.path))
        return payload

    def remove(self) -> None:
        """Delete this checkpoint and every one beside it that a rank or sample wrote (:meth:`sibling`)."""
        for path in self.path.parent.glob(f"{self.path.stem}*{self.path.suffix}"):
            path.unlink()


def nested(persist: Persist | None, extra: dict) -> Persist | None:
    """The hook of one inner solve of a method that runs several (DDIP's slices, D3IP-meta's stages): it saves
    ``{**extra, "inner": payload}`` through ``persist``, so the outer loop's state travels in the same checkpoint
    and a resumed method hands ``resume["inner"]`` to the inner solve it stopped in."""
    if persist is None:
        return None
    return lambda i, n_total, payload: persist(i, n_total, lambda: {**extra, "inner": payload()})


def resumable_solve(step, prior, y, physics, *, generator: torch.Generator, persist: Persist | None = None,
                    resume: dict | None = None, adapter=None, **solve_kwargs):
    """:func:`ddip.solvers.solve` that hands its state to the hook ``persist`` after every step and, given the
    payload ``resume`` such a hook saved, continues from it.

    The payload: the index of the last finished step, the next state ``x``, the step's carried state, the sampling
    generator's state and, for adapted methods, the adapter's full state.
    """
    n_total = int(solve_kwargs.get("n_steps") or step.n_steps)
    if resume is not None:
        generator.set_state(resume["generator"])
        if adapter is not None:
            adapter.load_state_dict(resume["adapter"])
        solve_kwargs.update(x_T=resume["x"].to(y.device), start=int(resume["i"]) + 1, state=resume["state"])

    def callback(i: int, t: int, out) -> None:
        if persist is not None:
            persist(i, n_total, lambda: {"i": i, "x": out.x_next, "state": out.state,
                                         "generator": generator.get_state(),
                                         "adapter": None if adapter is None else adapter.state_dict()})

    return solve(step, prior, y, physics, generator=generator, before_step=adapter, callback=callback, **solve_kwargs)
