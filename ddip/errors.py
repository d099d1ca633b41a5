"""The one exception type ddip raises for bad input.

Every malformed input (missing file, wrong shape, NaN, mismatched mask, corrupt checkpoint) is reported as a
:class:`DdipError` whose message names the offending file or argument and the problem, so that the command line
can print it and exit non-zero without a traceback.
"""

from __future__ import annotations


class DdipError(ValueError):
    """Bad input given to ddip: the message names what is wrong and where."""
