"""dicom-node's `StopSignals`: a SIGTERM or SIGINT is never lost, whenever it comes."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from app.stop_signals import STOP_SIGNALS, StopSignals, signals_interrupt


@pytest.fixture(autouse=True)
def handlers_restored() -> Iterator[None]:
    """A stop leaves SIGTERM and SIGINT ignored for the rest of the exit; the test process goes on."""
    before = {handled: signal.getsignal(handled) for handled in STOP_SIGNALS}
    yield
    for handled, handler in before.items():
        signal.signal(handled, handler)


def waiting_thread(stop_signals: StopSignals, interrupt_at: int | None = None) -> tuple[threading.Thread, list[int]]:
    """`stop_signals.wait()` in a thread (a lost signal would block the test for ever); with `interrupt_at`, the
    handler runs at that profiling event of the wait (a call or return), as a signal coming then would run it."""
    fired: list[int] = []
    events = itertools.count(1)

    def interrupting(frame: FrameType, event: str, arg: object) -> None:
        if next(events) == interrupt_at and not fired:
            fired.append(interrupt_at)
            stop_signals.note(signal.SIGTERM, frame)

    def waiting() -> None:
        sys.setprofile(interrupting)
        try:
            stop_signals.wait()
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=waiting, daemon=True)
    thread.start()
    return thread, fired


def test_a_signal_before_the_wait_ends_it_at_once() -> None:
    with StopSignals() as stop_signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        waiter, _ = waiting_thread(stop_signals)
        waiter.join(10)

        assert not waiter.is_alive()


def test_a_signal_during_the_wait_ends_it() -> None:
    with StopSignals() as stop_signals:
        waiter, _ = waiting_thread(stop_signals)
        waiter.join(0.2)
        assert waiter.is_alive()
        os.kill(os.getpid(), signal.SIGTERM)
        waiter.join(10)

        assert not waiter.is_alive()


def test_the_handler_may_run_at_any_instant_of_the_wait() -> None:
    """Python runs a handler in the main thread between any two bytecodes, so also while the main thread is inside
    `wait`: a handler that needed a lock `wait` holds then (a `threading.Event`'s) waited for ever. The handler is
    run here at each instant of the wait in turn, until the wait blocks before the instant comes; then the signal
    comes from outside."""
    for instant in itertools.count(1):
        with StopSignals() as stop_signals:
            waiter, fired = waiting_thread(stop_signals, interrupt_at=instant)
            waiter.join(0.1)
            if waiter.is_alive():
                threading.Thread(target=stop_signals.note, args=(signal.SIGTERM, None), daemon=True).start()
                waiter.join(10)

            assert not waiter.is_alive(), f"the wait never ended: the handler ran at its event {instant}"
        if not fired:
            break


def test_the_handlers_before_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop_signals:
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == stop_signals.note

    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_stop_signal_is_told_without_waiting_and_leaves_both_signals_ignored() -> None:
    """dicom-node asks `came` after its models load, so that a signal noted before the load could be interrupted
    does not have it listen first (review 49 F5); once stopping, a second signal cannot kill it halfway (F6)."""
    with StopSignals() as stop_signals:
        assert not stop_signals.came()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_signals.came()
        stop_signals.wait()
        assert stop_signals.came()

    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_stop_inside_signals_interrupt_leaves_both_signals_ignored() -> None:
    with pytest.raises(KeyboardInterrupt), StopSignals(), signals_interrupt():
        os.kill(os.getpid(), signal.SIGINT)

    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_signals_interrupt_gives_back_the_handlers_when_not_stopped() -> None:
    with StopSignals() as stop_signals:
        with signals_interrupt():
            pass
        assert signal.getsignal(signal.SIGTERM) == stop_signals.note


def test_a_stop_inside_leaves_both_signals_ignored_past_an_outer_signals_interrupt() -> None:
    """`brain-tumor` holds the daemons' first moments in an outer `signals_interrupt` (review 49 F4): its end must
    not give back handlers that a stop inside has set to ignored."""
    with signals_interrupt(), contextlib.suppress(KeyboardInterrupt), StopSignals(), signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)

    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_IGN
