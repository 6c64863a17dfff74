"""Progress that reads well on a terminal and in a pipe: a tqdm bar on a terminal, plain lines in a log."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

from tqdm import tqdm

from crossmodal import interrupts

PIPE_INTERVAL_S = 10.0
T = TypeVar("T")


class _Lines:
    """A progress line every ``interval`` seconds and one at the end, for output that is not a terminal."""

    def __init__(self, total: Optional[int], description: str, unit: str, stream: TextIO, interval: float) -> None:
        self.total, self.description, self.unit, self.stream, self.interval = total, description, unit, stream, interval
        self.count = 0
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.count += count
        if time.monotonic() - self.last >= self.interval:
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        self.last = time.monotonic()
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        print(f"{self.description}: {done} {self.unit}s{share}, {self.last - self.start:.1f} s",
              file=self.stream, flush=True)


class _Silent:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress_bar(total: Optional[int], description: Optional[str], unit: str = "item",
                 stream: Optional[TextIO] = None, interval: float = PIPE_INTERVAL_S) -> Iterator:
    """A progress counter with ``update(n)``: tqdm on a terminal, a plain line every ``interval`` seconds and at
    the end otherwise, nothing when ``description`` is None.

    Examples:
        >>> with progress_bar(len(dataset), "features train", unit="sample") as bar:
        ...     for batch in loader:
        ...         bar.update(len(batch["label"]))
    """
    stream = stream or sys.stderr
    if description is None:
        bar = _Silent()
    elif stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True, mininterval=0.5,
                   leave=False)
    else:
        bar = _Lines(total, description, unit, stream, interval)
    try:
        yield bar
    finally:
        bar.close()


class _InterruptibleBar(tqdm):
    """A tqdm bar whose every step re-raises a Ctrl-C that was swallowed (see crossmodal.interrupts)."""

    def update(self, n: float | None = 1) -> bool | None:
        interrupts.check()
        return super().update(n)

    def __iter__(self):
        for item in super().__iter__():
            interrupts.check()
            yield item


def sample_bar(items: Iterable[T] | None, total: int, desc: str) -> tqdm:
    """A progress bar over samples on stderr that stops at a Ctrl-C: iterate over it, or call ``update(n)`` when
    ``items`` is None (the converters and the synthetic generator)."""
    return _InterruptibleBar(items, total=total, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.5)
