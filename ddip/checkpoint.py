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
from pathlib import Path

import torch

from ddip import distributed
from ddip.errors import DdipError
from ddip.io import atomic_path, check_same_settings
from ddip.signals import Interrupted, StopRequest
from ddip.solvers import solve

CHECKPOINT_EVERY = 5  # steps between checkpoints: at most this many are lost to kill -9


class Checkpointer:
    """Saves ``payload`` dicts to ``path`` every ``every`` steps and reads them back for ``--resume``.

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
        """A checkpointer for one stage of a multi-stage method, beside this one."""
        return Checkpointer(self.path.with_name(f"{self.path.stem}.{suffix}{self.path.suffix}"), self.settings_dict,
                            every=self.every, stop=self.stop)

    def due(self, i: int) -> bool:
        return (i + 1) % self.every == 0

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

    def nested(self, extra: dict, resume: dict | None) -> "NestedCheckpointer":
        """A checkpointer for one inner solve of a method that loops over solves (DDIP's slices): its payload is saved
        inside this checkpoint beside ``extra`` (the outer loop's state), and ``resume`` is what it resumes from."""
        return NestedCheckpointer(self, extra, resume)

    def remove(self) -> None:
        """Delete this checkpoint and every one beside it that a stage, rank or sample wrote (:meth:`sibling`)."""
        for path in self.path.parent.glob(f"{self.path.stem}*{self.path.suffix}"):
            path.unlink()


class NestedCheckpointer:
    """:meth:`Checkpointer.nested`: an inner solve's checkpoints, saved as ``{**extra, "inner": payload}``."""

    def __init__(self, outer: Checkpointer, extra: dict, resume: dict | None):
        self.outer, self.extra, self.resume = outer, extra, resume
        self.path, self.stop, self.every = outer.path, outer.stop, outer.every

    def due(self, i: int) -> bool:
        return self.outer.due(i)

    def stop_requested(self) -> bool:
        return self.outer.stop_requested()

    def save(self, payload: dict) -> None:
        self.outer.save({**self.extra, "inner": payload})

    def load(self) -> dict | None:
        return self.resume


def resumable_solve(step, prior, y, physics, *, generator: torch.Generator, checkpointer: Checkpointer | None,
                    adapter=None, **solve_kwargs):
    """:func:`ddip.solvers.solve` that saves its state every few steps and, if a checkpoint exists, resumes from it.

    The payload: the index of the last finished step, the next state ``x``, the step's carried state, the sampling
    generator's state and, for adapted methods, the adapter's full state. No checkpoint is written after the last
    step (the run then finishes and writes its result).
    """
    n_total = int(solve_kwargs.get("n_steps") or step.n_steps)
    resume = checkpointer.load() if checkpointer is not None else None
    if resume is not None:
        generator.set_state(resume["generator"])
        if adapter is not None:
            adapter.load_state_dict(resume["adapter"])
        solve_kwargs.update(x_T=resume["x"].to(y.device), start=int(resume["i"]) + 1, state=resume["state"])

    def save(i: int, t: int, out) -> None:
        if checkpointer is None or i == n_total - 1:  # after the last step the run finishes and writes its result
            return
        stop = checkpointer.stop_requested()
        if stop or checkpointer.due(i):
            checkpointer.save({"i": i, "x": out.x_next, "state": out.state, "generator": generator.get_state(),
                               "adapter": None if adapter is None else adapter.state_dict()})
        if stop:
            signum = checkpointer.stop.signum or signal.SIGTERM
            raise Interrupted(f"{signal.Signals(signum).name} received: stopped after sampling step {i + 1} of "
                              f"{n_total} with the whole state saved in {checkpointer.path}; run the same command "
                              f"with --resume to continue", signum)

    return solve(step, prior, y, physics, generator=generator, before_step=adapter, callback=save, **solve_kwargs)
