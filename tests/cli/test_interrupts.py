"""A Ctrl-C swallowed by a callback (Python prints "Exception ignored" and goes on) is raised again by the next
progress step, so an interrupted conversion or training run always stops."""
import signal

import pytest

from crossmodal import interrupts
from crossmodal.progress import sample_bar


@pytest.fixture(autouse=True)
def _fresh():
    interrupts.reset()
    yield
    interrupts.reset()


def swallowed_interrupt():
    try:
        interrupts._interrupt_handler(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # what a weakref callback does with it


def test_a_swallowed_interrupt_stops_the_next_progress_step():
    bar = sample_bar(None, 10, "test")
    bar.update(1)  # no request: goes on
    swallowed_interrupt()
    with pytest.raises(KeyboardInterrupt):
        bar.update(1)
    bar.close()


def test_a_swallowed_interrupt_stops_an_iterated_bar():
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for item in sample_bar(range(5), 5, "test"):
            seen.append(item)
            if item == 1:
                swallowed_interrupt()
    assert seen == [0, 1]


def test_without_a_request_nothing_is_raised():
    assert list(sample_bar(range(3), 3, "test")) == [0, 1, 2]
    interrupts.check()
