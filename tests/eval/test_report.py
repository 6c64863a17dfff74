"""``crossmodal report`` on hand-made probe and segmentation results with known means and stds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_line, run_cli
from crossmodal.errors import DataError
from crossmodal.eval.report import (aggregate, format_cell, load_results, method_order, render_markdown, summarize,
                                    write_report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def probe(method: str, seed: int, linear: list[float], knn: list[float], data: str = "nyu.h5",
          labels: str = "scene") -> dict:
    """A probe result with stages 0, 1 and embedding, top-1 as given."""
    stages = [{"stage": name, "pool": "avg", "pooled_size": 2, "dim": 8,
               "linear": {"top1": top1, "solver": "sklearn", "chosen": {"C": 1.0}, "holdout_top1": top1},
               "knn": {"top1": knn_top1, "chosen": {"k": 5, "temperature": 0.07}, "holdout_top1": knn_top1}}
              for name, top1, knn_top1 in zip(["0", "1", "embedding"], linear, knn)]
    return {"format": "crossmodal-probe/1", "checkpoint": f"runs/{method}-{seed}", "random_init": method == "scratch",
            "method": method, "seed": seed, "modality": "depth", "data": data, "labels": labels,
            "train_split": "train", "test_split": "test", "holdout_fraction": 0.2, "num_train": 80, "num_test": 20,
            "num_classes": 10, "chance": 0.1, "stages": stages}


def segment(method: str, seed: int, miou: float) -> dict:
    scores = {"pixel_acc": 0.8, "mean_class_acc": 0.6, "miou": miou, "per_class_iou": {"wall": 0.5, "sofa": None},
              "preview": "preview.png"}
    return {"format": "crossmodal-segment/1", "checkpoint": f"runs/{method}-{seed}", "random_init": False,
            "method": method, "seed": seed, "modality": "depth", "data": "nyu.h5", "labels": "seg13",
            "train_split": "train", "test_split": "test", "epochs": 2,
            "results": {"finetune": scores, "frozen": {**scores, "miou": miou - 0.1}}}


def write(path: Path, result) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """crd over three seeds (linear embedding 0.70/0.72/0.74), one scratch and one supervised run, segmentation."""
    folder = tmp_path / "runs"
    for seed, top1 in enumerate([0.70, 0.72, 0.74]):
        write(folder / f"crd-{seed}" / "probe.json", probe("crd", seed, [0.3, 0.5, top1], [0.2, 0.4, top1 - 0.1]))
        write(folder / f"crd-{seed}" / "segment.json", segment("crd", seed, 0.40 + 0.01 * seed))
    write(folder / "scratch" / "probe.json", probe("scratch", 0, [0.2, 0.2, 0.15], [0.1, 0.1, 0.1]))
    write(folder / "supervised" / "probe.json", probe("supervised", 0, [0.4, 0.6, 0.8], [0.3, 0.5, 0.7]))
    write(folder / "cmc" / "probe.json", probe("cmc", 0, [0.3, 0.4, 0.5], [0.2, 0.3, 0.4]))
    write(folder / "crd-0" / "config.json", {"optim": {"lr": 0.1}})  # not a result: skipped
    return folder


def test_summary_and_cell_match_hand_values():
    summary = summarize([0.70, 0.72, 0.74])
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.72) and summary["std"] == pytest.approx(0.02)
    assert format_cell(summary) == "72.0 ± 2.0 (n=3)"
    assert format_cell(summarize([0.5])) == "50.0 (n=1)"
    assert format_cell(summarize([float("nan")])) == "–"


def test_method_order_puts_baselines_first():
    assert method_order(["crd", "supervised", "cmc", "scratch", "crd"]) == ["scratch", "supervised", "cmc", "crd"]


def test_aggregate_groups_methods_over_seeds(runs):
    report = aggregate(load_results([runs]))
    (table,) = report["probe"]
    assert list(table["methods"]) == ["scratch", "supervised", "cmc", "crd"]
    crd = table["methods"]["crd"]
    assert crd["seeds"] == [0, 1, 2]
    assert crd["linear"]["embedding"]["mean"] == pytest.approx(0.72)
    assert crd["linear"]["embedding"]["std"] == pytest.approx(0.02)
    assert crd["knn"]["embedding"]["mean"] == pytest.approx(0.62)
    assert table["methods"]["scratch"]["linear"]["0"] == {"mean": 0.2, "std": None, "n": 1}
    (seg,) = report["segment"]
    assert seg["methods"]["crd"]["finetune"]["miou"]["mean"] == pytest.approx(0.41)
    assert seg["methods"]["crd"]["frozen"]["miou"]["std"] == pytest.approx(0.01)
    assert len(report["inputs"]) == 9


def test_separate_tables_per_data_set_and_label_set(tmp_path):
    files = [write(tmp_path / "a.json", probe("crd", 0, [0.1, 0.2, 0.9], [0.1, 0.2, 0.3])),
             write(tmp_path / "b.json", probe("crd", 1, [0.1, 0.2, 0.5], [0.1, 0.2, 0.3], data="sun.h5")),
             write(tmp_path / "c.json", probe("crd", 2, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], labels="room"))]
    tables = aggregate(load_results(files))["probe"]
    assert [(table["data"], table["labels"]) for table in tables] == [("nyu.h5", "scene"), ("sun.h5", "scene"),
                                                                       ("nyu.h5", "room")]
    assert [table["methods"]["crd"]["linear"]["embedding"]["n"] for table in tables] == [1, 1, 1]


def test_a_class_subset_is_its_own_table_named_by_its_classes(tmp_path):
    whole = write(tmp_path / "all.json", probe("crd", 0, [0.1, 0.2, 0.4], [0.1, 0.2, 0.3]))
    held_out = write(tmp_path / "held.json", {**probe("crd", 0, [0.1, 0.2, 0.7], [0.1, 0.2, 0.3]),
                                              "classes": ["bed", "sofa"]})  # same method and seed: not a duplicate
    report = aggregate(load_results([whole, held_out]))
    assert [table["classes"] for table in report["probe"]] == [None, ["bed", "sofa"]]
    assert [table["methods"]["crd"]["linear"]["embedding"]["mean"] for table in report["probe"]] == [0.4, 0.7]
    assert "labels `scene` (classes bed, sofa only)" in render_markdown(report)
    bad = write(tmp_path / "bad.json", {**probe("crd", 1, [0.1, 0.2, 0.7], [0.1, 0.2, 0.3]), "classes": "bed"})
    with pytest.raises(DataError, match="'classes' must be a list of class names or null"):
        load_results([bad])


def test_duplicate_seed_keeps_the_last_and_warns(tmp_path, capsys):
    first = write(tmp_path / "first.json", probe("crd", 0, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]))
    second = write(tmp_path / "second.json", probe("crd", 0, [0.1, 0.2, 0.6], [0.1, 0.2, 0.3]))
    report = aggregate(load_results([first, second]))
    assert report["probe"][0]["methods"]["crd"]["linear"]["embedding"] == {"mean": 0.6, "std": None, "n": 1}
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "warning" in warning and str(second) in warning


def test_write_report_outputs(runs, tmp_path):
    out = tmp_path / "report"
    write_report([runs], out, title="Depth students")
    for name in ("probe_linear.png", "probe_knn.png", "segmentation_miou.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Depth students")
    rows = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[:5] == ["method", "scratch", "supervised", "cmc", "crd"]
    assert "| crd | 30.0 ± 0.0 (n=3) | 50.0 ± 0.0 (n=3) | 72.0 ± 2.0 (n=3) |" in markdown
    assert "Chance level: 10.0%" in markdown and "checkpoint `runs/crd-2`" in markdown
    assert "| crd | 80.0 ± 0.0 (n=3) | 60.0 ± 0.0 (n=3) | 41.0 ± 1.0 (n=3) |" in markdown
    saved = json.loads((out / "report.json").read_text())
    assert saved["probe"][0]["methods"]["crd"]["linear"]["embedding"]["mean"] == pytest.approx(0.72)
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # no temporaries left


def test_named_file_of_another_format_is_an_error(tmp_path):
    other = write(tmp_path / "config.json", {"format": "something-else/1"})
    with pytest.raises(DataError, match="config.json"):
        load_results([other])


def test_cli_prints_the_table_and_writes_the_report(runs, tmp_path):
    result = run_cli("report", runs / "crd-0", runs / "crd-1", runs / "scratch" / "probe.json", "--out",
                     tmp_path / "out", check=True)
    assert "| crd |" in result.stdout and "| scratch |" in result.stdout
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "segmentation_miou.png").is_file()


@pytest.mark.parametrize("make, problem", [
    (lambda folder: folder, "no crossmodal-probe/1 or crossmodal-segment/1 JSON files found"),
    (lambda folder: write_text(folder / "bad.json", "{not json"), "cannot read it as JSON"),
    (lambda folder: write(folder / "other.json", {"format": "crossmodal-train/1"}), "not a probe or segmentation"),
    (lambda folder: write(folder / "partial.json", {"format": "crossmodal-probe/1", "method": "crd"}), "lacks"),
])
def test_cli_errors_are_one_line(tmp_path, make, problem):
    folder = tmp_path / "empty"
    folder.mkdir()
    path = make(folder)
    line = error_line(run_cli("report", path, "--out", tmp_path / "out"))
    assert line.startswith(f"crossmodal report: error: {path}") and problem in line


def test_an_out_folder_that_cannot_be_made_is_a_data_error(runs, tmp_path):
    blocker = write_text(tmp_path / "file", "x")
    with pytest.raises(DataError, match="cannot create this folder"):
        write_report([runs], blocker / "report")


def test_report_names_the_solver_and_the_fits_that_did_not_converge(tmp_path):
    from crossmodal.eval.report import render_markdown

    torch_run = probe("crd", 0, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    for stage in torch_run["stages"]:
        stage["linear"].update(solver="torch", converged=True, iterations=12)
    torch_run["stages"][1]["linear"]["converged"] = False
    torch_run["stages"][2]["same_as"] = ["4"]
    files = [write(tmp_path / "a.json", torch_run)]
    text = render_markdown(aggregate(load_results(files)))
    assert "fitted by the `torch` solver" in text
    assert "Stopped at the iteration cap before converging: crd seed 0 stage 1." in text
    assert "| embedding (= stage 4) |" in text
    files.append(write(tmp_path / "b.json", probe("scratch", 0, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])))
    mixed = render_markdown(aggregate(load_results(files)))
    assert "Warning: these runs were probed by different solvers (sklearn, torch)" in mixed


def test_a_truncated_result_in_a_folder_is_named_and_left_out(runs, tmp_path):
    """Before (issue 27): a truncated probe.json was skipped without a word and crd averaged two seeds as if
    they were all. Now one warning line names it, the report goes on, and report.md lists it."""
    damaged = runs / "crd-2" / "probe.json"
    damaged.write_text(damaged.read_text()[:300])
    with pytest.raises(ValueError) as why:
        json.loads(damaged.read_text())
    result = run_cli("report", runs, "--out", tmp_path / "out", check=True)
    line = f"{damaged}: a damaged crossmodal-probe/1 result: cannot read it as JSON ({why.value})"
    assert result.stderr.splitlines() == [f"crossmodal report: warning: {line}; left out of the report"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| crd | 30.0 ± 0.0 (n=2) |" in markdown  # the two readable seeds, and n says so
    assert f"## Left out (unreadable)\n\n- {line}\n" in markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text())["left_out"] == [line]
