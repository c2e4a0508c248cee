"""The trainer's SIGINT handler: held inside the weight update, raised outside it, and absent where
the process was started to ignore SIGINT."""

from __future__ import annotations

import os
import signal

import pytest

from visionloom.engine.interrupt import DeferredInterrupt


def test_sigint_inside_the_update_waits_for_its_end(sigint_from_a_terminal):
    finished_update = False
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt() as interrupts, interrupts.critical():
        os.kill(os.getpid(), signal.SIGINT)
        finished_update = True
    assert finished_update
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_process_that_ignores_sigint_keeps_ignoring_it_while_training():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with DeferredInterrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing raises
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
