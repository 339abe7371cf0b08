"""Bad input at the command line ends in one line that names the problem and the fix.

Malformed traces, unknown names, missing files and invalid values raise ValueError,
KeyError or FileNotFoundError with such a line already (traces/validation.py,
conf/validate.py, profiles/); the commands print it alone instead of a traceback.
``HYDRA_FULL_ERROR=1`` (or ``SPECBED_DEBUG=1``) lets the exception through with its traceback.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError)


def debugging() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR",
                                                                  "SPECBED_DEBUG"))


def one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"error: {text}"


@contextmanager
def one_line_errors():
    """Turn bad-input exceptions into ``SystemExit("error: ...")`` (exit status 1)."""
    try:
        yield
    except INPUT_ERRORS as err:
        if debugging():
            raise
        raise SystemExit(one_line(err) + "  (HYDRA_FULL_ERROR=1 shows the traceback)") from None


@contextmanager
def output_to(path):
    """Send this process's stdout and stderr (file descriptors 1 and 2: logging, warnings,
    progress bars and C++ messages of third-party libraries alike) to ``path`` while the
    block runs; the terminal keeps our own lines before and after. Off when debugging."""
    import sys

    if debugging():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
