"""``crossmodal probe`` end to end on the smoke distillation: the JSON report, the table and one-line errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, cli, error_line
from crossmodal.data.integrity import refresh_row_crcs
from crossmodal.eval.probe import COARSE_EXPONENTS, REFINE_STEPS

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, Path]:
    """A finished smoke distillation (CRD, RGB teacher -> depth student) and its synthetic file."""
    folder = tmp_path_factory.mktemp("probe")
    data, run = folder / "s.h5", folder / "run"
    result = cli("distill", SMOKE_DISTILL, "--out", run, f"data.path={data}", "data.generate.num=160",
                 "train.epochs=1", "train.progress=false")
    assert result.returncode == 0, result.stderr
    return run, data


def test_probe_writes_json_and_table(smoke, tmp_path):
    run, data = smoke
    out = tmp_path / "p.json"
    result = cli("probe", "--checkpoint", run, "--data", data, "--json", out, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert not result.stderr.count("warning")  # every fit converged
    report = json.loads(out.read_text())
    assert report["format"] == "crossmodal-probe/1"
    assert report["method"] == "crd" and report["random_init"] is False and report["seed"] == 0  # the run's seed
    assert report["modality"] == "depth" and report["labels"] == "label"
    assert (report["train_split"], report["test_split"], report["holdout_fraction"]) == ("train", "test", 0.2)
    assert report["checkpoint"] == str(run) and report["data"] == str(data)
    assert report["num_train"] + report["num_test"] <= 160 and report["num_classes"] >= 2
    assert 0 < report["chance"] <= 1
    assert report["solver"] == "torch" and report["device"] == "cpu"
    assert 0 < report["seconds"]["features"] <= report["seconds"]["total"]
    names = [stage["stage"] for stage in report["stages"]]
    assert names == ["0", "1", "2", "3", "4", "embedding"]
    for stage in report["stages"]:
        assert stage["pool"] == "avg" and 0 < stage["dim"] <= 8192 and stage["same_as"] == []
        assert (stage["pooled_size"] is None) == (stage["stage"] == "embedding")
        linear = stage["linear"]
        assert 0 <= linear["top1"] <= 1 and 0 <= linear["holdout_top1"] <= 1
        assert linear["solver"] == "torch" and set(linear["chosen"]) == {"C"}
        assert 1e-6 <= linear["chosen"]["C"] <= 1e5
        # every coarse C and two per refinement step, one fewer per step taken at the grid's edge
        assert len(COARSE_EXPONENTS) + len(REFINE_STEPS) <= linear["candidates"] <= (
            len(COARSE_EXPONENTS) + 2 * len(REFINE_STEPS))
        assert linear["converged"] is True and linear["iterations"] >= 1 and linear["not_converged"] == []
        assert 0 < linear["seconds"] <= stage["seconds"]
        assert 0 <= stage["knn"]["top1"] <= 1 and set(stage["knn"]["chosen"]) == {"k", "temperature"}
    lines = result.stdout.splitlines()
    assert "torch solver on cpu" in lines[0]
    assert "linear" in lines[1] and "kNN" in lines[1] and "seconds" in lines[1]
    assert lines[-2].split()[0] == "embedding" and f"written to {out}" == lines[-1]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left
    # progress on stderr (not a terminal here: plain lines), a line per stage as it finishes
    progress = result.stderr.splitlines()
    assert "features train: " in progress[0] and "(100%)" in progress[0]
    stage_lines = [line for line in progress if line.startswith("probe stage ")]
    assert [line.split(":")[0] for line in stage_lines] == [f"probe stage {name}" for name in names]
    assert "linear" in stage_lines[0] and "C=" in stage_lines[0] and stage_lines[0].endswith(" s")


def test_sklearn_solver_and_the_feature_cache(smoke, tmp_path):
    run, data = smoke
    cache = tmp_path / "features"
    args = ("probe", "--checkpoint", run, "--data", data, "--stages", "3", "--feature-cache", cache)
    first = cli(*args, "--solver", "sklearn", "--json", tmp_path / "a.json")
    assert first.returncode == 0, first.stderr
    assert sorted(path.name for path in cache.iterdir()) == ["features-test-depth-label-avg.safetensors",
                                                            "features-train-depth-label-avg.safetensors"]
    assert "reused" not in first.stderr and "features train" in first.stderr
    second = cli(*args, "--json", tmp_path / "b.json")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count(": reused") == 2 and "features train" not in second.stderr  # nothing encoded
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a["solver"] == "sklearn" and a["stages"][0]["linear"]["candidates"] == 6
    assert b["solver"] == "torch"
    assert [s["dim"] for s in a["stages"]] == [s["dim"] for s in b["stages"]]
    assert [s["knn"] for s in a["stages"]] == [{**s["knn"], "seconds": t["knn"]["seconds"]}
                                               for s, t in zip(b["stages"], a["stages"])]  # the same features
    # another encoder (a random one): rebuilt, and said so in one line per split
    third = cli(*args, "--random-init")
    assert third.returncode == 0, third.stderr
    assert third.stderr.count("encoder changed; rebuilding") == 2, third.stderr
    # a truncated file: rebuilt with the reason
    train_file = cache / "features-train-depth-label-avg.safetensors"
    train_file.write_bytes(train_file.read_bytes()[:100])
    fourth = cli(*args, "--random-init")
    assert fourth.returncode == 0, fourth.stderr
    assert f"feature cache {train_file}: unreadable" in fourth.stderr and "rebuilding" in fourth.stderr
    assert not list(cache.glob(".*tmp*"))
    # 20 raised exponent bytes (safetensors has no checksum): rebuilt, naming the tensor, never reused
    from test_feature_cache import raise_bytes

    raise_bytes(train_file, "embedding", itemsize=4, byte=3)
    fifth = cli(*args, "--random-init")
    assert fifth.returncode == 0, fifth.stderr
    assert (f"feature cache {train_file}: damaged: tensor embedding fails its CRC-32 check; rebuilding"
            in fifth.stderr.splitlines())
    assert oct(train_file.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_diverged_encoder_is_one_line_naming_the_stage(smoke, tmp_path):
    from safetensors.torch import load_file, save_file

    run, data = smoke
    from safetensors import safe_open

    weights = run / "student.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    name = next(key for key in tensors if "layer4" in key and key.endswith("running_mean"))
    tensors[name][0] = float("nan")
    broken = tmp_path / "diverged.safetensors"
    from crossmodal.models.weights import tensor_crc32s  # as a diverged run exports it: its CRC-32s match

    save_file(tensors, str(broken), metadata={**metadata, "crc32": tensor_crc32s(tensors)})
    line = error_line(cli("probe", "--checkpoint", broken, "--data", data, "--modality", "depth",
                          "--json", tmp_path / "p.json"))
    assert "stage 4 has NaN or infinite features on split 'train'" in line, line
    assert not (tmp_path / "p.json").exists()


def test_random_init_is_the_scratch_baseline(smoke, tmp_path):
    run, data = smoke
    out = tmp_path / "scratch.json"
    result = cli("probe", "--checkpoint", run / "student.safetensors", "--data", data, "--modality", "depth",
                 "--random-init", "--seed", "5", "--stages", "-1", "--pool", "max", "--pooled-size", "2",
                 "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["method"] == "scratch" and report["random_init"] is True and report["seed"] == 5
    assert [(s["stage"], s["pool"], s["pooled_size"]) for s in report["stages"]] == [
        ("4", "max", 2), ("embedding", "max", None)]
    assert report["stages"][0]["dim"] == 4 * report["stages"][1]["dim"]


@pytest.mark.parametrize("args, message", [
    (("--labels", "nope"), "no class label set 'nope'; it has ['label']"),
    (("--modality", "rgb"), "--modality rgb has 3 channels, the encoder"),
    (("--modality", "thermal"), "modality 'thermal' is not defined; this file offers"),
    (("--test-split", "val"), "no split 'val'; it has"),
    (("--stages", "7"), "--stages: no stage 7"),
    (("--device", "bogus"), "device 'bogus' is not a device name"),
    (("--test-split", "train"), "--train-split and --test-split are both 'train'"),
    (("--solver", "auto"), "invalid choice: 'auto'"),
])
def test_one_line_errors(smoke, args, message):
    run, data = smoke
    line = error_line(cli("probe", "--checkpoint", run, "--data", data, *args))
    assert line.startswith("crossmodal probe: error:") and message in line, line


def test_one_class_in_train_is_one_line(smoke, tmp_path):
    import shutil

    import h5py

    run, data = smoke
    copy = tmp_path / "one_class.h5"
    shutil.copy(data, copy)
    with h5py.File(copy, "r+") as handle:
        labels = handle["labels/label"][()]
        labels[handle["splits/train"][()]] = 3
        handle["labels/label"][...] = labels
        refresh_row_crcs(handle, "labels/label")  # an edit, not damage
    line = error_line(cli("probe", "--checkpoint", run, "--data", copy, "--json", tmp_path / "p.json"))
    assert f"{copy}: label set 'label' has 1 class(es) among the labelled samples of split 'train'" in line, line
    assert not (tmp_path / "p.json").exists()


def test_missing_checkpoint(tmp_path, smoke):
    line = error_line(cli("probe", "--checkpoint", tmp_path / "absent", "--data", smoke[1]))
    assert "no such run folder or weight file" in line


def test_an_unwritable_json_is_one_line_before_any_work(smoke):
    run, data = smoke
    line = error_line(cli("probe", "--checkpoint", run, "--data", data, "--json", data / "sub" / "p.json"))
    assert f"{data / 'sub'}: cannot create this folder" in line, line


def test_a_class_subset_is_probed_on_the_cached_features_of_the_whole_split(smoke, tmp_path):
    import h5py
    import numpy as np

    run, data = smoke
    with h5py.File(data, "r") as handle:
        values = handle["labels/label"][()]
        train, test = (values[handle[f"splits/{split}"][()]] for split in ("train", "test"))
        names = [str(n) for n in handle["labels/label"].attrs["class_names"]]
    in_both = [i for i in range(len(names)) if (train == i).any() and (test == i).any()]
    chosen = [in_both[2], in_both[0], in_both[1]]
    cache = tmp_path / "features"
    args = ("probe", "--checkpoint", run, "--data", data, "--stages", "3", "--feature-cache", cache)
    subset = cli(*args, "--classes", names[chosen[0]], str(chosen[1]), names[chosen[2]], "--json", tmp_path / "s.json")
    assert subset.returncode == 0, subset.stderr
    whole = cli(*args, "--json", tmp_path / "w.json")
    assert whole.returncode == 0 and whole.stderr.count(": reused") == 2  # the subset's features were the split's
    result, everything = (json.loads((tmp_path / name).read_text()) for name in ("s.json", "w.json"))
    assert result["classes"] == [names[i] for i in chosen] and everything["classes"] is None
    assert result["num_classes"] == 3
    assert result["num_train"] == int(np.isin(train, chosen).sum()) < everything["num_train"]
    assert result["num_test"] == int(np.isin(test, chosen).sum())
    counts = [int((test == i).sum()) for i in chosen]
    assert result["chance"] == pytest.approx(max(counts) / sum(counts))
    assert f"'label' classes {', '.join(names[i] for i in chosen)}, 3 classes" in subset.stdout.splitlines()[0]


def test_a_probe_class_subset_error_is_one_line(smoke, tmp_path):
    import shutil

    import h5py

    run, data = smoke
    line = error_line(cli("probe", "--checkpoint", run, "--data", data, "--classes", "box", "sofa"))
    assert "--classes: 'label' has no class 'sofa'; its classes are box," in line, line

    copy = tmp_path / "no_box_in_test.h5"
    shutil.copy(data, copy)
    with h5py.File(copy, "r+") as handle:  # the test split's boxes (class 0) become balls (class 1)
        labels = handle["labels/label"][()]
        test_rows = handle["splits/test"][()]
        labels[test_rows[labels[test_rows] == 0]] = 1
        handle["labels/label"][...] = labels
        refresh_row_crcs(handle, "labels/label")  # an edit, not damage
    line = error_line(cli("probe", "--checkpoint", run, "--data", copy, "--classes", "ball", "box",
                          "--json", tmp_path / "p.json"))
    assert f"{copy}: split 'test' has no sample of class box in 'label' (--classes)" in line, line
    assert not (tmp_path / "p.json").exists()
