"""``crossmodal segment`` end to end on the smoke distillation's student, and its one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, cli, error_line, needs_package, run_cli
from tb_events import assert_events_match_metrics, hparams, images

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The smoke distillation (depth student, 160 synthetic scenes, one epoch) run by the CLI."""
    tmp = tmp_path_factory.mktemp("segment_cli")
    run, data = tmp / "run", tmp / "s.h5"
    run_cli("distill", SMOKE_DISTILL, "--out", run, f"data.path={data}", "data.generate.num=160",
            "train.epochs=1", "train.progress=false", check=True)
    return tmp, run, data


@pytest.fixture(scope="module")
def segmented(student):
    tmp, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg", "--epochs", "1",
                             "--json", tmp / "s.json")
    assert result.returncode == 0, result.stderr
    return tmp, run, data, result


def test_segment_round_trip_writes_the_json(segmented):
    tmp, run, data, _ = segmented
    result = json.loads((tmp / "s.json").read_text())
    out = run / "segment-seg-both"
    assert json.loads((out / "segment.json").read_text()) == result
    assert result["format"] == "crossmodal-segment/1"
    assert {key: result[key] for key in ("checkpoint", "random_init", "method", "seed", "modality", "data",
                                         "labels", "train_split", "test_split", "epochs")} == {
        "checkpoint": str(run), "random_init": False, "method": "crd", "seed": 0, "modality": "depth",
        "data": str(data), "labels": "seg", "train_split": "train", "test_split": "test", "epochs": 1}
    assert list(result["results"]) == ["finetune", "frozen"]
    for protocol, scores in result["results"].items():
        assert set(scores) == {"pixel_acc", "mean_class_acc", "miou", "per_class_iou", "preview"}
        assert all(0 <= scores[key] <= 1 for key in ("pixel_acc", "mean_class_acc", "miou"))
        assert all(iou is None or 0 <= iou <= 1 for iou in scores["per_class_iou"].values())
        assert "floor" in scores["per_class_iou"]
        assert Path(scores["preview"]) == out / protocol / "preview.png"
        assert Path(scores["preview"]).read_bytes()[:8] == PNG_SIGNATURE
        assert (out / protocol / "curves.png").is_file() and (out / protocol / "config.yaml").is_file()


def test_each_protocol_has_its_events_with_the_preview_and_the_confusion_matrix(segmented):
    needs_package("tensorboard", "tensorboard")
    _, run, _, _ = segmented
    for protocol in ("finetune", "frozen"):
        folder = run / "segment-seg-both" / protocol
        got = assert_events_match_metrics(folder)
        last = got["loss"][-1][0]
        assert {"eval_miou", "eval_pixel_acc", "train_loss"} <= set(got)
        pictures = images(folder / "tb")
        assert set(pictures) == {"curves", "preview", "confusion"}
        assert all([step for step, *_ in shown] == [last] for shown in pictures.values())
        assert hparams(folder / "tb")["verb"] == "segment"


def test_no_tensorboard_writes_no_events(student, tmp_path):
    _, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg", "--epochs", "1", "--protocol",
                 "frozen", "--no-tensorboard", "--out", tmp_path / "quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "quiet" / "frozen" / "preview.png").is_file()
    assert not (tmp_path / "quiet" / "frozen" / "tb").exists()


def test_segment_prints_a_table(segmented):
    *_, result = segmented
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("protocol"))
    assert lines[header].split() == ["protocol", "pixel_acc", "mean_class_acc", "miou"]
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[0] for row in rows] == ["finetune", "frozen"]
    scores = json.loads((segmented[0] / "s.json").read_text())["results"]
    for row in rows:  # percent with one decimal, like probe and report; the JSON keeps the fractions
        assert row[1:] == [f"{100 * scores[row[0]][key]:.1f}%" if scores[row[0]][key] is not None else "-"
                           for key in ("pixel_acc", "mean_class_acc", "miou")]


def test_a_class_label_set_is_one_line(student):
    tmp, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "label",
                             "--out", tmp / "x")
    assert result.returncode == 2
    assert "'label'" in error_line(result) and "not a segmentation" in error_line(result)


def test_an_unknown_label_set_is_one_line(student):
    tmp, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "nope",
                             "--out", tmp / "x")
    assert result.returncode == 2
    assert "no label set 'nope'" in error_line(result) and "seg" in error_line(result)


def test_a_missing_checkpoint_is_one_line(student, tmp_path):
    _, _, data = student
    result = cli("segment", "--checkpoint", tmp_path / "absent", "--data", data, "--labels", "seg")
    assert result.returncode == 2
    assert str(tmp_path / "absent") in error_line(result)


@pytest.mark.parametrize("args, message", [
    (("--test-split", "val"), "no split 'val' (--test-split); it has ['test', 'train']"),
    (("--train-split", "test"), "--train-split and --test-split are both 'test'"),
    (("--device", "bogus"), "device 'bogus' is not a device name"),
    (("--json", "DATA/sub/s.json"), "cannot create this folder"),
])
def test_bad_options_are_one_line_and_write_nothing(student, tmp_path, args, message):
    _, run, data = student
    args = [str(arg).replace("DATA", str(data)) for arg in args]
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg",
                             "--out", tmp_path / "out", *args)
    assert result.returncode == 2
    assert message in error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected, key", [
    (("--batch-size", "100000"), "--batch-size 100000 x 1 process(es) exceeds the", "train.batch_size"),
    (("--lr", "-1"), "--lr must be a positive number, got -1.0", "optim.lr"),
])
def test_errors_name_the_flags_not_the_config_keys(student, tmp_path, args, expected, key):
    _, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg", "--out", tmp_path / "out", *args)
    assert result.returncode == 2
    line = error_line(result)
    assert expected in line and key not in line and "segment: segment:" not in line
    assert not (tmp_path / "out").exists()


def test_eval_every_spaces_the_monitoring_scores_not_the_result(student, tmp_path):
    """--eval-every 3 over 3 epochs: the curves hold the test split's scores of the last epoch only; the result
    is scored after the last epoch as always."""
    import json

    _, run, data = student
    result = cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg", "--epochs", "3", "--eval-every",
                 "3", "--protocol", "frozen", "--no-augment", "--out", tmp_path / "seg")
    assert result.returncode == 0, result.stderr
    epochs = [json.loads(line) for line in (tmp_path / "seg" / "frozen" / "metrics.jsonl").read_text().splitlines()]
    epochs = [record for record in epochs if record["scope"] == "epoch"]
    assert [record["epoch"] for record in epochs if "eval_miou" in record] == [3]
    scored = json.loads((tmp_path / "seg" / "segment.json").read_text())["results"]["frozen"]
    assert 0.0 <= scored["miou"] <= 1.0
