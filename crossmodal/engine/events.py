"""TensorBoard events of a run: ``RUN_DIR/tb/events.out.tfevents.crossmodal``, written beside ``metrics.jsonl``.

One event file per run, appended record by record as training goes (each write is flushed, so a killed run keeps
everything up to its last record) and read by ``tensorboard --logdir`` like any other:

* every number of a ``metrics.jsonl`` record as a scalar under the same name at the record's step (in float32,
  the only type TensorBoard's fast loader reads: the JSON value rounded to float32);
* the run's config as hyper-parameters (TensorBoard's hparams view: one session per run, whose metrics are the
  last value of each scalar, i.e. the run's final metrics), written at step 0, and the session's end;
* pictures (PNG bytes) as images at their step.

The file never holds two events of one tag at one step: on resume :meth:`EventFile.rewind` cuts the file after
the checkpoint's step (as ``MetricsLog.rewind`` does; in place, so it stays the same file), a record cut short by a
kill is dropped with it, and a write of a (tag, step) the file already holds is skipped (a finished run resumed to
write its exports again writes its pictures and its end again). A TensorBoard server left running across a
resume may keep the steps it had read before the cut: reload it. The records are TFRecord frames of ``tensorboard.compat.proto``
``Event`` messages; the ``tensorboard`` package is needed to write them (``pip install 'crossmodal[tensorboard]'``),
not to train.
"""
from __future__ import annotations

import json
import math
import os
import struct
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from crossmodal.errors import ConfigError, DataError
from crossmodal.files import atomic_output, os_reason, refused_write, writable_folder
from crossmodal.run_folder import CONFIG, TENSORBOARD

EVENT_FILE = "events.out.tfevents.crossmodal"  # TensorBoard reads the files whose name holds "tfevents"
OWNER_FILE = "crossmodal-run.txt"  # in an event folder outside its run: which run's events it holds
INSTALL = "pip install 'crossmodal[tensorboard]'"
_SAID: list[str] = []  # the reason events are off, once said
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def unavailable() -> Optional[str]:
    """Why events cannot be written here (the reason, one line), or None when they can."""
    try:
        import tensorboard.compat.proto.event_pb2  # noqa: F401
        from tensorboard.plugins.hparams import metadata  # noqa: F401
    except ImportError as err:
        missing = (getattr(err, "name", None) or "tensorboard").split(".")[0]
        if missing == "tensorboard":
            return f"the tensorboard package is not installed ({INSTALL})"
        return f"the tensorboard package cannot be imported: {_one_line(err)} ({INSTALL})"
    except Exception as err:  # a broken install (protobuf versions): say so, and train without events
        return f"the tensorboard package cannot be imported: {_one_line(err)} ({INSTALL})"
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


class EventFile:
    """The event file of the run in ``run_dir``, in ``folder``.

    Args:
        folder: the event folder (``RUN_DIR/tb`` by default; ``train.logdir``).
        run_dir: the run it belongs to. A folder outside the run records the run's path in ``crossmodal-run.txt``,
            and a folder that holds another run's events (or event files of another program) is refused: their
            curves would mix.

    Raises:
        ConfigError: the folder holds another run's events.
        DataError: the folder cannot be created or written in (one line, before any training).
    """

    def __init__(self, folder: str, run_dir: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, EVENT_FILE)
        self.run_dir = os.path.abspath(run_dir)
        self._check_owner()
        writable_folder(self.folder)
        if not _inside(self.folder, self.run_dir):
            self._claim()
        self._seen: Optional[set[tuple[str, int]]] = None  # (tag, step) in the file; read at the first write

    # ------------------------------------------------------------------------------------------- writing
    def scalars(self, record: Mapping[str, Any]) -> None:
        """Every finite number of a ``metrics.jsonl`` record but its step, at its step. TensorBoard keeps scalars
        in float32 (its fast loader reads no other type), so each reads back as the JSON value rounded to it."""
        step = int(record["step"])
        values = [self._summary_pb2.Summary.Value(tag=key, simple_value=float(value))
                  for key, value in record.items() if key not in ("scope", "step") and finite(value)]
        self._write(step, values)

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG picture at ``step``."""
        width, height = _png_size(png)
        image = self._summary_pb2.Summary.Image(height=height, width=width, colorspace=_colorspace(png),
                                                encoded_image_string=png)
        self._write(step, [self._summary_pb2.Summary.Value(tag=tag, image=image)])

    def hparams(self, values: Mapping[str, Any]) -> None:
        """The session's start in the hparams view: ``values`` (a flat config; lists and None as text), step 0."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in values.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, (int, float)) and math.isfinite(value):
                start.hparams[name].number_value = value
            else:
                start.hparams[name].string_value = value if isinstance(value, str) else json.dumps(value, default=str)
        self._write(0, [self._hparams_value("session_start_info", plugin_data_pb2.HParamsPluginData(
            session_start_info=start))])

    def end(self, step: int) -> None:
        """The session's end (status success) at ``step``: the run finished."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
        self._write(step, [self._hparams_value("session_end_info", plugin_data_pb2.HParamsPluginData(
            session_end_info=end))])

    def rewind(self, step: int) -> None:
        """Keep only the events up to ``step`` (what the checkpoint being resumed had seen; -1: none, a run started
        over), and drop a record cut short by a kill. The file is cut in place after the last event kept (events
        are written in the order of their steps), so it stays the same file."""
        events, ends, complete = self._read()
        kept = next((index for index, event in enumerate(events)
                     if event.step > step and not event.HasField("file_version")), len(events))
        if kept < len(events) or not complete:
            self._cut(ends[kept - 1] if kept else 0)
        self._seen = _keys(events[:kept])

    # ------------------------------------------------------------------------------------------- the file
    def _write(self, step: int, values: list) -> None:
        if self._seen is None:
            events, ends, complete = self._read()
            if not complete:  # a kill cut the last record: appending after it would hide every later one
                self._cut(ends[-1] if ends else 0)
            self._seen = _keys(events)
        values = [value for value in values if (value.tag, step) not in self._seen]
        if not values:
            return
        frames = b""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            frames = _frame(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        event = self._event_pb2.Event(wall_time=time.time(), step=step,
                                      summary=self._summary_pb2.Summary(value=values))
        try:
            with open(self.path, "ab") as handle:
                handle.write(frames + _frame(event))
        except OSError as err:
            refused = refused_write(err, self.path)
            if refused is None:
                raise
            raise refused from None
        self._seen.update((value.tag, step) for value in values)

    def _read(self) -> tuple[list, list[int], bool]:
        """The file's events, the offset where each ends, and whether the file ended on a whole record."""
        if not os.path.exists(self.path):
            return [], [], True
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise DataError(self.path, f"cannot read it: {os_reason(err)}") from None
        events, ends = [], []
        for end, payload in _frames(data):
            events.append(self._event_pb2.Event.FromString(payload))
            ends.append(end)
        return events, ends, (ends[-1] if ends else 0) == len(data)

    def _cut(self, size: int) -> None:
        try:
            os.truncate(self.path, size)
        except OSError as err:
            refused = refused_write(err, self.path)
            raise refused or DataError(self.path, f"cannot shorten it: {os_reason(err)}") from None

    def _hparams_value(self, name: str, data: Any) -> Any:
        from tensorboard.plugins.hparams import metadata

        return self._summary_pb2.Summary.Value(tag=f"_hparams_/{name}", tensor=metadata.NULL_TENSOR,
                                               metadata=metadata.create_summary_metadata(data))

    def _check_owner(self) -> None:
        owner_path = os.path.join(self.folder, OWNER_FILE)
        try:
            names = os.listdir(self.folder)
        except OSError:  # absent (created next) or unreadable (writable_folder says why)
            return
        if OWNER_FILE in names:
            try:
                with open(owner_path, encoding="utf-8") as handle:
                    owner = handle.read().strip()
            except OSError as err:
                raise DataError(owner_path, f"cannot read it: {os_reason(err)}") from None
            if os.path.realpath(owner) != os.path.realpath(self.run_dir):
                raise ConfigError(f"train.logdir: {self.folder} holds the TensorBoard events of the run {owner}; "
                                  f"give this run a folder of its own (or none: its events go to RUN_DIR/tb; if "
                                  f"this run was moved from there, remove {owner_path})")
            return
        if CONFIG in names and os.path.realpath(self.folder) != os.path.realpath(self.run_dir):
            raise ConfigError(f"train.logdir: {self.folder} is the folder of another run ({CONFIG}); give this run "
                              f"an event folder of its own (or none: its events go to RUN_DIR/tb)")
        foreign = sorted(name for name in names if "tfevents" in name)
        if foreign and not _inside(self.folder, self.run_dir):
            raise ConfigError(f"train.logdir: {self.folder} holds event files of another run ({foreign[0]}); give "
                              f"this run a folder of its own (or none: its events go to RUN_DIR/tb)")

    def _claim(self) -> None:
        owner_path = os.path.join(self.folder, OWNER_FILE)
        if os.path.exists(owner_path):
            return
        with atomic_output(owner_path) as temporary:  # a refused write is its one-line DataError
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(self.run_dir + "\n")


def open_events(enabled: bool, logdir: Optional[str], run_dir: str,
                say: Callable[[str], None]) -> Optional[EventFile]:
    """The run's :class:`EventFile` (in ``logdir``, default ``RUN_DIR/tb``), or None: turned off
    (``train.tensorboard: false``), or the package is missing, which ``say`` tells in one line."""
    if not enabled:
        return None
    reason = unavailable()
    if reason is not None:
        if not _SAID:  # once per process (a study or segment's protocols start several runs)
            _SAID.append(reason)
            say(f"note: TensorBoard events are off: {reason}; train.tensorboard=false silences this")
        return None
    return EventFile(logdir or os.path.join(run_dir, TENSORBOARD), run_dir)


def write_summary(run_dir: str, hparams: Mapping[str, Any], scalars: Mapping[str, Any],
                  say: Callable[[str], None]) -> None:
    """Events of a folder made without training (an imported teacher, a fitted head): its hyper-parameters, its
    numbers as scalars at step 0, and its end, in ``RUN_DIR/tb``; nothing without the tensorboard package (``say``
    tells why)."""
    events = open_events(True, None, run_dir, say)
    if events is not None:
        events.hparams(hparams)
        events.scalars({"step": 0, **scalars})
        events.end(0)


def read_events(path: str) -> Iterator[Any]:
    """The ``Event`` messages of an event file, up to its last whole record (for tests and tools)."""
    from tensorboard.compat.proto import event_pb2

    with open(path, "rb") as handle:
        data = handle.read()
    for _, payload in _frames(data):
        yield event_pb2.Event.FromString(payload)


def _frame(event: Any) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the payload, its masked CRC-32C."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    payload = event.SerializeToString()
    header = _LENGTH.pack(len(payload))
    return header + _CRC.pack(masked_crc32c(header)) + payload + _CRC.pack(masked_crc32c(payload))


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(end offset, payload) of each whole record whose CRCs hold; stops at the first that is cut or damaged."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    position = 0
    while position + 12 <= len(data):
        header = data[position:position + 8]
        (length,) = _LENGTH.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, position + 8)
        end = position + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        payload = data[position + 12:position + 12 + length]
        if _CRC.unpack_from(data, end - 4)[0] != masked_crc32c(payload):
            return
        yield end, payload
        position = end


def _keys(events: list) -> set[tuple[str, int]]:
    return {(value.tag, event.step) for event in events for value in event.summary.value}


def _inside(folder: str, run_dir: str) -> bool:
    return os.path.commonpath([os.path.realpath(folder), os.path.realpath(run_dir)]) == os.path.realpath(run_dir)


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", png[16:24])


def _colorspace(png: bytes) -> int:
    """TensorBoard's colour space (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) of a PNG's colour type."""
    return {0: 1, 4: 2, 2: 3, 3: 3, 6: 4}.get(png[25], 3)


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool): a number a scalar or a curve can show."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
