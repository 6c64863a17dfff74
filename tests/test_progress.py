"""Progress reads well in a pipe: a plain line every interval and one at the end; nothing when disabled."""
from __future__ import annotations

import io

from crossmodal.progress import progress_bar


def test_lines_in_a_pipe():
    stream = io.StringIO()  # not a terminal
    with progress_bar(10, "features train", unit="sample", stream=stream, interval=0.0) as bar:
        bar.update(4)
        bar.update(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("features train: 4/10 samples (40%), ")
    assert lines[-1].startswith("features train: 10/10 samples (100%), ") and lines[-1].endswith(" s")
    assert len(lines) == 3  # after each update (interval 0) and at the end


def test_one_line_at_the_end_with_the_default_interval_and_none_when_disabled():
    stream = io.StringIO()
    with progress_bar(None, "encoding", stream=stream) as bar:
        bar.update(3)
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("encoding: 3 items, ")
    quiet = io.StringIO()
    with progress_bar(5, None, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
