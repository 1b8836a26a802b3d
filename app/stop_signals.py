"""SIGTERM and SIGINT as Ctrl-C (`signals_interrupt`), for the daemons that stop mid-step: pacs-sync throughout, and
dicom-node while its models load, before it listens."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM (what `docker compose stop` and systemd send) and SIGINT raise KeyboardInterrupt in the main thread,
    as Ctrl-C does, so that the step in progress is abandoned and the command can log its stop and exit 0. SIGTERM
    used to kill pacs-sync by the signal, and SIGINT did nothing to one started with SIGINT ignored (a script's
    background job); while the models loaded, both daemons died by SIGTERM with exit 143 (ops review 44 F6). The
    handlers that were there before come back afterwards."""

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {handled: signal.signal(handled, interrupt) for handled in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)
