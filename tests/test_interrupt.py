"""tools/interrupt.py: SIGTERM stops a tool as Ctrl-C does, with its own words and status."""

from __future__ import annotations

import os
import signal

import pytest

from rustydb_server.tools.interrupt import Terminated, interruption, sigterm_interrupts


def test_sigterm_inside_raises_terminated_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # the handler raises before this returns
    assert signal.getsignal(signal.SIGTERM) == before


def test_each_interruption_has_its_words_and_exit_status():
    assert interruption(Terminated()) == ("stopped by SIGTERM", 143)
    assert interruption(KeyboardInterrupt()) == ("interrupted", 130)


def test_outside_the_main_thread_the_handler_is_left_alone():
    import threading

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def embedded():
        with sigterm_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=embedded)
    t.start()
    t.join()
    assert seen == [before]
