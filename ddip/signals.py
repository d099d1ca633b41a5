"""Stop at the next safe point on SIGTERM / SIGINT instead of dying: what batch schedulers and Ctrl-C send.

Long loops (prior training, every sampling step of a reconstruction) poll :attr:`StopRequest.requested`; on a
request they write their checkpoint and stop. A second signal of the same kind is not caught again: it ends the
process at once, as an impatient user expects.
"""

from __future__ import annotations

import signal
import threading

from ddip.errors import DdipError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(DdipError):
    """A run stopped by a signal after saving its state (the message says how to continue)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by a signal."""
        return 128 + self.signum


class StopRequest:
    """Catches SIGTERM and SIGINT while active (a context manager; only the main thread can install handlers)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "no signal" if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one is not caught

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
