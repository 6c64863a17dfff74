"""The TensorBoard event file of a run (crossmodal/engine/events.py), read back with TensorBoard's own reader:
scalars, images, the hparams session, one event per tag and step, rewinding, a record cut by a kill, and the
one-line refusals (another run's folder, an unwritable folder, a full disk, no tensorboard package)."""
from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, needs_package
from tb_events import accumulator, hparams, images, scalars

needs_package("tensorboard", "tensorboard")

from crossmodal.engine.events import EVENT_FILE, OWNER_FILE, EventFile, open_events, read_events  # noqa: E402
from crossmodal.engine.metrics_log import MetricsLog  # noqa: E402
from crossmodal.errors import ConfigError, DataError  # noqa: E402


def png(width: int, height: int) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    figure.add_subplot().plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def records(*steps: int) -> list[dict]:
    return [{"scope": "step", "step": step, "epoch": step / 4, "lr": 0.1 / step, "loss": 1 / 3 + step,
             "crd/z_student": 1e4 + step, "flag": True, "name": "text"} for step in steps]


def test_scalars_read_back_as_the_records_rounded_to_float32(tmp_path):
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    for record in records(3, 6):
        events.scalars(record)
    got = scalars(tmp_path / "tb")
    # every number but the step, under its own name, at its step; booleans and text are not scalars
    assert set(got) == {"epoch", "lr", "loss", "crd/z_student"}
    assert got["loss"] == [(3, float(np.float32(1 / 3 + 3))), (6, float(np.float32(1 / 3 + 6)))]
    assert got["lr"] == [(3, float(np.float32(0.1 / 3))), (6, float(np.float32(0.1 / 6)))]
    assert not (tmp_path / "tb" / OWNER_FILE).exists()  # inside its run: nobody else's folder


def test_images_and_the_hparams_session(tmp_path):
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    events.hparams({"optim.lr": 0.05, "train.bf16": False, "distill.name": "crd", "data.size": [32, 32],
                    "teacher.weights": None})
    events.image("preview", png(320, 200), 8)
    events.end(8)
    assert images(tmp_path / "tb") == {"preview": [(8, 320, 200)]}
    assert hparams(tmp_path / "tb") == {"optim.lr": 0.05, "train.bf16": False, "distill.name": "crd",
                                        "data.size": "[32, 32]", "teacher.weights": "null"}
    tags = accumulator(tmp_path / "tb").Tags()["tensors"]
    assert set(tags) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_a_tag_is_written_once_per_step(tmp_path):
    """A finished run resumed to write its exports again writes its pictures and its end again: skipped."""
    for _ in range(2):  # a second EventFile: what a resumed process sees
        events = EventFile(str(tmp_path / "tb"), str(tmp_path))
        events.scalars(records(4)[0])
        events.image("curves", png(100, 80), 4)
        events.end(4)
    path = tmp_path / "tb" / EVENT_FILE
    keys = [(value.tag, event.step) for event in read_events(str(path)) for value in event.summary.value]
    assert len(keys) == len(set(keys)) == 6  # epoch, lr, loss, z, curves, session end
    assert images(tmp_path / "tb") == {"curves": [(4, 100, 80)]}


def test_rewind_drops_what_lies_past_the_checkpoint(tmp_path):
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    for record in records(2, 4, 6):
        events.scalars(record)
    events.image("curves", png(100, 80), 6)
    inode = (tmp_path / "tb" / EVENT_FILE).stat().st_ino
    resumed = EventFile(str(tmp_path / "tb"), str(tmp_path))
    resumed.rewind(4)
    for record in records(6, 8):  # the resumed run writes step 6 again, then goes on
        resumed.scalars(record)
    assert [step for step, _ in scalars(tmp_path / "tb")["loss"]] == [2, 4, 6, 8]
    assert images(tmp_path / "tb") == {}
    assert (tmp_path / "tb" / EVENT_FILE).stat().st_ino == inode  # cut in place: the same file, appended to


def test_a_record_cut_by_a_kill_is_dropped_and_the_later_ones_read(tmp_path):
    """A kill during a write leaves a record whose header is whole and whose payload is cut; appending after it
    would hide every later record from TensorBoard's reader."""
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    for record in records(2, 4):
        events.scalars(record)
    path = tmp_path / "tb" / EVENT_FILE
    whole = path.stat().st_size
    events.scalars(records(6)[0])
    record = path.read_bytes()[whole:]
    os.truncate(path, whole)
    with open(path, "ab") as handle:  # the record of step 6, cut in the middle of its payload
        handle.write(record[:len(record) // 2])
    resumed = EventFile(str(tmp_path / "tb"), str(tmp_path))
    resumed.scalars(records(8)[0])
    assert [step for step, _ in scalars(tmp_path / "tb")["loss"]] == [2, 4, 8]


def test_a_run_started_over_keeps_nothing_of_its_first_start(tmp_path):
    """Killed before its first checkpoint, a run starts again, perhaps with other settings (segment allows it):
    its hyper-parameters are the new ones."""
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    events.hparams({"optim.lr": 0.1})
    events.scalars(records(1)[0])
    again = EventFile(str(tmp_path / "tb"), str(tmp_path))
    again.rewind(-1)
    again.hparams({"optim.lr": 0.2})
    assert hparams(tmp_path / "tb") == {"optim.lr": 0.2} and scalars(tmp_path / "tb") == {}
    assert next(read_events(str(tmp_path / "tb" / EVENT_FILE))).file_version == "brain.Event:2"


def test_metrics_log_writes_both_and_rewinds_both(tmp_path):
    log = MetricsLog(str(tmp_path), events=EventFile(str(tmp_path / "tb"), str(tmp_path)))
    for record in records(1, 2, 3):
        log.log(record)
    log.rewind(2)
    log.log(records(3)[0])
    assert [step for step, _ in scalars(tmp_path / "tb")["loss"]] == [1, 2, 3]
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    quiet = MetricsLog(str(tmp_path / "rank1"), enabled=False, events=EventFile(str(tmp_path / "x"), str(tmp_path)))
    assert quiet.events is None  # under DDP only rank 0 writes


def test_a_folder_of_another_run_is_one_line(tmp_path):
    shared = tmp_path / "events"
    EventFile(str(shared), str(tmp_path / "run-a")).scalars(records(1)[0])
    assert (shared / OWNER_FILE).read_text() == f"{tmp_path / 'run-a'}\n"
    EventFile(str(shared), str(tmp_path / "run-a"))  # the same run again (resumed): its own folder
    with pytest.raises(ConfigError) as caught:
        EventFile(str(shared), str(tmp_path / "run-b"))
    assert str(caught.value) == (f"train.logdir: {shared} holds the TensorBoard events of the run {tmp_path / 'run-a'}"
                                 f"; give this run a folder of its own (or none: its events go to RUN_DIR/tb; if "
                                 f"this run was moved from there, remove {shared / OWNER_FILE})")
    (tmp_path / "link-a").symlink_to(tmp_path / "run-a")
    EventFile(str(shared), str(tmp_path / "link-a"))  # the same run through a symbolic link
    another_run = tmp_path / "run-c"
    another_run.mkdir()
    (another_run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"run-c is the folder of another run \(config.yaml\); give this run an event"):
        EventFile(str(another_run), str(tmp_path / "run-b"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "events.out.tfevents.1700000000.host").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds event files of another run \(events.out.tfevents.1700000000"):
        EventFile(str(foreign), str(tmp_path / "run-b"))


def test_an_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError) as caught:
        EventFile(str(blocker / "tb"), str(tmp_path))
    assert str(caught.value).startswith(f"{blocker / 'tb'}: cannot create this folder: ")


def test_a_full_disk_while_writing_events_is_one_line(tmp_path, monkeypatch):
    """Injected; the real full disk (a tmpfs) is in tests/train/test_tensorboard.py."""
    events = EventFile(str(tmp_path / "tb"), str(tmp_path))
    events.scalars(records(1)[0])
    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith(EVENT_FILE) and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(DataError) as caught:
        events.scalars(records(2)[0])
    assert str(caught.value) == f"{tmp_path / 'tb' / EVENT_FILE}: cannot write it: no space left on the device"


def test_off_by_config_or_without_the_package(tmp_path):
    said = []
    assert open_events(False, None, str(tmp_path), said.append) is None and said == []
    assert not (tmp_path / "tb").exists()
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from crossmodal.engine.events import open_events\n"
            f"open_events(True, None, {str(tmp_path)!r}, print)\n"  # a second run in the process: said once
            f"print(open_events(True, None, {str(tmp_path)!r}, print))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.splitlines() == [
        "note: TensorBoard events are off: the tensorboard package is not installed (pip install "
        "'crossmodal[tensorboard]'); train.tensorboard=false silences this", "None"]
    assert not (tmp_path / "tb").exists()
