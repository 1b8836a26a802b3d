"""Keep TensorFlow's startup log off a command's terminal unless it is asked for.

TensorFlow 2.21 writes its oneDNN and CPU-feature lines from C++ straight to file descriptor 2 while it is imported,
before its logging honours `TF_CPP_MIN_LOG_LEVEL`. So the commands load TensorFlow (and the models) with descriptor 2
pointed at a temporary file, which is shown only if loading fails, and set `TF_CPP_MIN_LOG_LEVEL` for what it logs
later. Python-side noise (Keras and absl warnings) is filtered too. `--verbose` skips all of it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_LEVEL = "2"  # TensorFlow's C++ log: errors only, no INFO or WARNING lines
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "h5py", "jax")


def quiet_tensorflow_logging() -> None:
    """Before TensorFlow is imported: its C++ log at errors only, its and Keras's Python warnings off.

    A `TF_CPP_MIN_LOG_LEVEL` already in the environment is the user's choice and is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|absl|h5py|jax)(\.|$)")


@contextmanager
def native_stderr_held(quiet: bool) -> Iterator[None]:
    """While the block runs, what C++ code writes to descriptor 2 goes to a temporary file; it is written out after
    all if the block fails (so a failing import still says why), not when it is stopped (KeyboardInterrupt: a
    daemon's SIGTERM while TensorFlow is imported would put its startup lines in its JSON log). Does
    nothing unless `quiet`."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except KeyboardInterrupt:
            _restore(saved)
            raise
        except BaseException:
            _restore(saved)
            held.seek(0)
            os.write(2, held.read())
            raise
        else:
            _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


@contextmanager
def tensorflow_log_held(verbose: bool) -> Iterator[None]:
    """For a block that imports TensorFlow or loads models: its log quiet and its startup lines held back, unless
    `verbose` (what `--verbose` asks for)."""
    if not verbose:
        quiet_tensorflow_logging()
    with native_stderr_held(quiet=not verbose):
        yield
