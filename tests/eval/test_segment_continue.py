"""``crossmodal segment`` stopped (SIGTERM, a full disk) continues when the same command runs again, and ends
bit for bit as an uninterrupted run (the engine's resume guarantee); a rerun with other settings is refused,
listing each difference by its flag; ``--labels`` defaults to the file's only segmentation label set."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from conftest import ROOT, cli, error_line

from crossmodal.models import Encoder
from crossmodal.train.export import export_encoder

pytestmark = pytest.mark.slow  # end to end: trains, starts processes

WORKER = Path(__file__).resolve().parent / "_sigterm_worker.py"
# 38 training scenes of the session's synthetic file, batch 8: 4 steps an epoch; --labels left to its default
ARGS = ["--modality", "depth", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]
TIMING = {"time_s", "samples_per_s"}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A bare exported depth encoder."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("continue") / "student.safetensors"
    export_encoder(Encoder("test_resnet", in_chans=1, small_input=True), path)
    return path


def command(student: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", "--checkpoint", str(student), "--data", str(data), *ARGS, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(student, synthetic_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "seg"
    result = cli(*command(student, synthetic_file, out))
    assert result.returncode == 0, result.stderr
    return out


def assert_same_segment_run(expected: Path, got: Path) -> None:
    """The same scores, the same trained weights and the same logged records (but times) in every protocol."""
    def scores(out: Path) -> dict:
        results = json.loads((out / "segment.json").read_text())["results"]
        return {protocol: {k: v for k, v in entry.items() if k != "preview"} for protocol, entry in results.items()}

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert scores(got) == scores(expected)
    for protocol in ("finetune", "frozen"):
        saved = [torch.load(out / protocol / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
                 for out in (expected, got)]
        assert saved[0].keys() == saved[1].keys()
        assert all(torch.equal(saved[0][key], saved[1][key]) for key in saved[0]), protocol
        assert records(got / protocol) == records(expected / protocol)
        assert (got / protocol / "preview.png").is_file() and (got / protocol / "curves.png").is_file()


# Ctrl-C stops training by the same deferred path (tests/train/test_ctrl_c.py); its hint is checked below, in
# test_a_stop_outside_training_also_names_the_same_command, without a second 10 s bit-for-bit run.
@pytest.mark.parametrize("signal_name, code, stopped_by", [("TERM", 143, "terminated (SIGTERM)")])
def test_after_a_signal_the_printed_hint_continues_the_run_bit_for_bit(student, synthetic_file, uninterrupted,
                                                                       tmp_path, signal_name, code, stopped_by):
    """SIGTERM or Ctrl-C after step 3 of the frozen protocol (finetune is finished): one line whose hint is the
    same command (before: '--resume .../frozen', which no verb accepts); running it continues frozen from step 3
    and scores finetune again, as an uninterrupted run."""
    out = tmp_path / "seg"
    args = command(student, synthetic_file, out)
    stopped = subprocess.run([sys.executable, str(WORKER), signal_name, "3", "frozen", *args], capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, timeout=300)
    assert stopped.returncode == code, stopped.stderr
    assert stopped.stderr.rstrip().splitlines()[-1] == (
        f"crossmodal segment: {stopped_by} after saving a checkpoint at step 3 (epoch 1, batch 3); run the same "
        f"crossmodal segment command again to continue")
    assert "Traceback" not in stopped.stderr and not (out / "segment.json").exists()

    again = cli(*args)  # the hint, as typed
    assert again.returncode == 0, again.stderr
    assert f"resumed {out / 'frozen' / 'checkpoint.pt'} at epoch 1, step 3" in again.stdout
    assert_same_segment_run(uninterrupted, out)


def test_after_a_full_disk_the_same_command_continues_from_the_last_checkpoint(student, synthetic_file,
                                                                                uninterrupted, tmp_path,
                                                                                monkeypatch):
    """The disk fills at frozen's second checkpoint: one line, exit 2; once there is room again, the same
    command continues from the first one (before: refused as 'already holds a run', the work lost)."""
    saves, save = [], torch.save

    def full_at_the_fourth(obj, target, *args, **kwargs):  # finetune's two epochs, then frozen's
        saves.append(target)
        if len(saves) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, target, *args, **kwargs)

    out = tmp_path / "seg"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_at_the_fourth)
        failed = cli(*command(student, synthetic_file, out))
    assert failed.returncode == 2
    assert error_line(failed).endswith("checkpoint.pt: cannot write it: no space left on the device")
    again = cli(*command(student, synthetic_file, out))
    assert again.returncode == 0, again.stderr
    assert f"resumed {out / 'frozen' / 'checkpoint.pt'} at epoch 2, step 4" in again.stdout
    assert_same_segment_run(uninterrupted, out)


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_rerun_with_other_settings_is_refused_listing_each_difference(student, synthetic_file, uninterrupted,
                                                                        tmp_path):
    out = tmp_path / "seg"
    shutil.copytree(uninterrupted, out)
    before = _digests(out)
    result = cli(*command(student, synthetic_file, out, "--epochs", "3", "--lr", "0.1", "--decoder-channels", "8"))
    assert result.returncode == 2
    assert error_line(result) == (
        f"crossmodal segment: error: --out: {out / 'finetune'} holds a run started with other settings (3 "
        f"differences: --lr 0.01 -> 0.1; --decoder-channels 64 -> 8; --epochs 2 -> 3); run the command with its "
        f"settings to continue it, or choose another --out")
    assert _digests(out) == before  # nothing written


def test_a_finished_run_run_again_is_only_scored_again(student, synthetic_file, uninterrupted, tmp_path):
    out = tmp_path / "seg"
    shutil.copytree(uninterrupted, out)
    checkpoints = {p: hashlib.sha256((out / p / "checkpoint.pt").read_bytes()).digest() for p in ("finetune", "frozen")}
    result = cli(*command(student, synthetic_file, out, "--num-workers", "1"))  # may change, as for --resume
    assert result.returncode == 0, result.stderr
    assert "epoch 1/2" not in result.stdout and "the run has finished (2 epochs, step 8)" in result.stdout
    assert {p: hashlib.sha256((out / p / "checkpoint.pt").read_bytes()).digest() for p in checkpoints} == checkpoints
    assert_same_segment_run(uninterrupted, out)


def test_a_damaged_checkpoint_names_the_way_to_train_that_protocol_afresh(student, synthetic_file, uninterrupted,
                                                                         tmp_path):
    """The engine's "start the run again" would meet the same file again under segment: the line says to remove
    the protocol's folder, and that command (run as printed) trains it afresh to the uninterrupted scores."""
    import zipfile

    out = tmp_path / "seg"
    shutil.copytree(uninterrupted, out)
    checkpoint = out / "frozen" / "checkpoint.pt"
    with zipfile.ZipFile(checkpoint) as archive:
        info = max(archive.infolist(), key=lambda member: member.file_size)  # the largest tensor's storage
    data = bytearray(checkpoint.read_bytes())
    name_length, extra_length = (int.from_bytes(data[info.header_offset + at:info.header_offset + at + 2], "little")
                                 for at in (26, 28))
    data[info.header_offset + 30 + name_length + extra_length + 5] ^= 0x08
    checkpoint.write_bytes(data)
    result = cli(*command(student, synthetic_file, out))
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"crossmodal segment: error: {checkpoint}: damaged: member ") and line.endswith(
        f"fails its CRC-32 check; restore an intact copy, or remove {out / 'frozen'} and run the same command "
        f"again to train frozen afresh"), line  # the same command: segment's, or the demo's that ran it
    shutil.rmtree(out / "frozen")
    again = cli(*command(student, synthetic_file, out))
    assert again.returncode == 0, again.stderr
    assert_same_segment_run(uninterrupted, out)


def with_two_segmentation_sets(source: Path, path: Path) -> Path:
    shutil.copy(source, path)
    with h5py.File(path, "a") as handle:
        for group in ("labels", "crc32/labels"):
            if f"{group}/seg" in handle:
                handle.copy(f"{group}/seg", f"{group}/parts")
    return path


def test_labels_default_to_the_only_segmentation_set_and_several_are_listed(student, synthetic_file,
                                                                            uninterrupted, tmp_path):
    assert json.loads((uninterrupted / "segment.json").read_text())["labels"] == "seg"  # no --labels given
    data = with_two_segmentation_sets(synthetic_file, tmp_path / "two.h5")
    result = cli(*command(student, data, tmp_path / "out"))
    assert result.returncode == 2
    assert error_line(result) == (f"crossmodal segment: error: --labels: {data} has several segmentation label sets "
                                  f"(parts, seg); choose one with --labels")
    assert not (tmp_path / "out").exists()

    data = tmp_path / "classes_only.h5"
    shutil.copy(synthetic_file, data)
    with h5py.File(data, "a") as handle:
        for group in ("labels", "crc32/labels"):
            if f"{group}/seg" in handle:
                del handle[f"{group}/seg"]
    result = cli(*command(student, data, tmp_path / "out"))
    assert error_line(result) == (f"crossmodal segment: error: --labels: {data} has no segmentation label set, "
                                  f"which segment needs (its label sets: label)")
    assert result.returncode == 2 and not (tmp_path / "out").exists()


def test_a_stop_outside_training_also_names_the_same_command():
    """A signal while scoring or writing the preview (no training step to finish): the same hint; the rerun
    scores the finished protocol again."""
    from crossmodal import interrupts
    from crossmodal.cli.rerun import continued_by_rerun

    for raised, kind, line in [(interrupts.Terminated("terminated (SIGTERM)"), interrupts.Terminated,
                                "terminated (SIGTERM)"),
                               (KeyboardInterrupt(), interrupts.Interrupted, "interrupted"),
                               (interrupts.Interrupted("interrupted (Ctrl-C) after saving a checkpoint at step 3; "
                                                       "--resume /runs/seg/frozen continues from it"),
                                interrupts.Interrupted, "interrupted (Ctrl-C) after saving a checkpoint at step 3")]:
        with pytest.raises(kind) as caught, continued_by_rerun("segment"):
            raise raised
        assert str(caught.value) == f"{line}; run the same crossmodal segment command again to continue"
