"""SIGTERM and SIGINT for the daemons: as Ctrl-C (`signals_interrupt`) for those that stop mid-step (pacs-sync
throughout, dicom-node while its models load), or noted (`StopSignals`) for dicom-node once it listens, which finishes
what it holds before it stops."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM (what `docker compose stop` and systemd send) and SIGINT raise KeyboardInterrupt in the main thread,
    as Ctrl-C does, so that the step in progress is abandoned and the command can log its stop and exit 0. Otherwise
    SIGTERM kills pacs-sync by the signal, SIGINT does nothing to one started with SIGINT ignored (a script's
    background job), and both daemons die by SIGTERM with exit 143 while the models load. The
    handlers that were there before come back afterwards, unless the block was stopped: then both signals are
    ignored for the rest of the exit, so that a second one (two Ctrl-C, a script's `kill; kill`) cannot kill the
    command by the signal halfway through its stop; SIGKILL still stops it. Handlers set inside the
    block and still there at its end (an inner stop's ignoring, serve's own) are left as they are."""

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {handled: signal.signal(handled, interrupt) for handled in STOP_SIGNALS}
    stopped = False
    try:
        yield
    except KeyboardInterrupt:
        stopped = True
        raise
    finally:
        for handled, handler in previous.items():
            if stopped:
                signal.signal(handled, signal.SIG_IGN)
            elif signal.getsignal(handled) is interrupt:  # not replaced inside (by a stop that ignores them)
                signal.signal(handled, handler)


class StopSignals:
    """SIGTERM and SIGINT noted while the context is open; `wait()` returns once either has come, before or during it.

    The handler writes a byte to a pipe, which takes no lock, not to a `threading.Event`: a handler runs in the main
    thread between two bytecodes, and one that ran while the main thread was inside `Event.wait()`, holding the
    Event's lock, would wait on that lock for ever (a dicom-node sent SIGTERM as it began to listen never exits).
    When the context closes, the handlers that were there before come back; once a stop signal has come, both are
    ignored instead, for the rest of the exit (as in `signals_interrupt`), and ignored ones are left so.
    """

    def __enter__(self) -> StopSignals:
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        self._previous = {handled: signal.signal(handled, self.note) for handled in STOP_SIGNALS}
        return self

    def note(self, number: int, frame: FrameType | None) -> None:
        """The signal handler: safe at any instant of the main thread."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already says "stop"
            os.write(self._write_end, b"\0")

    def came(self) -> bool:
        """Whether a stop signal has come (and not been waited for)."""
        return bool(select.select([self._read_end], [], [], 0)[0])

    def wait(self) -> None:
        """Block until a stop signal has come (at once if one came already)."""
        os.read(self._read_end, 1)
        os.write(self._write_end, b"\0")  # still true for `came`

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        stopping = self.came()
        for handled, handler in self._previous.items():
            if stopping:
                signal.signal(handled, signal.SIG_IGN)
            elif signal.getsignal(handled) == self.note:  # not ignored by a stop inside (`signals_interrupt`)
                signal.signal(handled, handler)
        os.close(self._read_end)
        os.close(self._write_end)
