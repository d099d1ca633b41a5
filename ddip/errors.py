"""The one exception type ddip raises for bad input.

Every malformed input (missing file, wrong shape, NaN, mismatched mask, corrupt checkpoint) is reported as a
:class:`DdipError` whose message names the offending file or argument and the problem, so that the command line
can print it and exit non-zero without a traceback.
"""

from __future__ import annotations


class DdipError(ValueError):
    """Bad input given to ddip: the message names what is wrong and where."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``exc``'s type and the first line of its message, cut at its first sentence when long: a library's reason
    inside a :class:`DdipError` (torch's unpickling errors run to paragraphs)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if len(text) > limit and ". " in text:
        text = text[:text.index(". ") + 1]
    return f"{type(exc).__name__}: {text}"


MAX_SEED = 2**62  # below torch's 2**63 limit with room for the derived seeds (seed + 1, seed + 2)


def check_seed(seed: int, owner: str) -> None:
    """Raise a :class:`DdipError` unless ``seed`` is an integer in [0, 2**62)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise DdipError(f"{owner}: seed must be an integer in [0, 2**62), got {seed!r}")
