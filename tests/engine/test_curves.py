"""RUN/curves.png: one panel per kind of series, readable for every distiller (losses are not flattened by
CRD's normalising constants, diagnostics get their own axes, no empty evaluation panel)."""
import math

import pytest

from crossmodal.engine.metrics_log import PLOT, MetricsLog, curve_panels, curves_figure, is_diagnostic, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOSS_TITLE = "training losses (unweighted terms)"
DIAGNOSTICS_LOG = "diagnostics, positive (log scale)"


def crd_records(steps=12, per_epoch=4, evaluate=False):
    """A CRD distillation's metrics as the training loop logs them, with CRD's default magnitudes."""
    records = []
    for step in range(1, steps + 1):
        decay = math.exp(-step / steps)
        records.append({
            "scope": "step", "step": step, "epoch": step / per_epoch, "lr": 0.05 * decay,
            "loss": 5.0 * decay, "ce": 2.3 * decay, "crd": 5.5 * decay,
            "crd/loss_student_anchor": 2.7 * decay, "crd/loss_teacher_anchor": 2.8 * decay,
            "crd/positive_score": 0.01 + 0.29 * (step - 1) / (steps - 1),
            "crd/z_student": 4400.0, "crd/z_teacher": 4410.0, "samples_per_s": 900.0,
        })
        if step % per_epoch == 0:
            record = {"scope": "epoch", "step": step, "epoch": step // per_epoch, "train_loss": 5.0 * decay,
                      "train_crd/z_student": 4400.0, "time_s": 1.5}
            if evaluate:
                record["eval_student_top1"] = 0.1 * step / per_epoch
            records.append(record)
    return records


def by_title(panels):
    return {panel.title: panel for panel in panels}


def axes_by_title(figure):
    return {axis.get_title(): axis for axis in figure.axes}


def labels(axis):
    return [line.get_label() for line in axis.get_lines()]


@pytest.mark.parametrize("key, diagnostic", [
    ("loss", False), ("ce", False), ("seg_ce", False), ("crd", False), ("crd/loss_student_anchor", False),
    ("at/stage_s1_t1", False), ("rkd/distance", False), ("crd_kd/kd", False),
    ("crd/z_student", True), ("crd/z_teacher", True), ("crd/positive_score", True), ("kd/agreement", True),
    ("crd_kd/kd/agreement", True), ("vid/mean_variance", True), ("grad_norm", True),
])
def test_series_kinds(key, diagnostic):
    assert is_diagnostic(key) is diagnostic


def test_crd_panels_keep_the_diagnostics_off_the_loss_axis():
    figure = curves_figure(crd_records())
    axes = axes_by_title(figure)
    assert sorted(axes) == sorted([LOSS_TITLE, "learning rate", DIAGNOSTICS_LOG])
    assert labels(axes[LOSS_TITLE]) == ["loss", "ce", "crd", "crd/loss_student_anchor", "crd/loss_teacher_anchor"]
    assert labels(axes[DIAGNOSTICS_LOG]) == ["crd/positive_score", "crd/z_student", "crd/z_teacher"]
    assert labels(axes["learning rate"]) == ["lr"]
    low, high = axes[LOSS_TITLE].get_ylim()
    assert axes[LOSS_TITLE].get_yscale() == "linear" and 0 < high < 10 and low > 0.5  # the losses, not 4400
    diagnostics = axes[DIAGNOSTICS_LOG]
    assert diagnostics.get_yscale() == "log"
    low, high = diagnostics.get_ylim()
    assert low <= 0.01 and high >= 4410
    low, high = axes["learning rate"].get_ylim()
    assert 0 < high < 0.1


def test_no_evaluation_panel_without_evaluation_metrics():
    titles = [panel.title for panel in curve_panels(crd_records())]
    assert "per-epoch evaluation" not in titles  # train_* epoch means and time_s do not make one


def test_evaluation_panel_with_eval_metrics():
    figure = curves_figure(crd_records(evaluate=True))
    axis = axes_by_title(figure)["per-epoch evaluation"]
    assert labels(axis) == ["eval_student_top1"]
    x, y = axis.get_lines()[0].get_data()
    assert list(x) == [1, 2, 3] and list(y) == pytest.approx([10.0, 20.0, 30.0])  # percent, as the console
    assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == "percent"


def test_diagnostics_that_cross_zero_get_linear_panels_by_magnitude():
    records = crd_records()
    for record in records:
        if record["scope"] == "step":
            record["crd/positive_score"] = -0.05 + 0.01 * record["step"]
    panels = [panel for panel in curve_panels(records) if panel.title.startswith("diagnostics")]
    assert [(panel.title, list(panel.series), panel.yscale) for panel in panels] == [
        ("diagnostics, positive", ["crd/z_student", "crd/z_teacher"], "linear"),
        ("diagnostics, signed", ["crd/positive_score"], "linear")]  # before: both titled "diagnostics"


def test_signed_diagnostics_of_several_magnitudes_say_theirs():
    records = crd_records()
    for record in records:
        if record["scope"] == "step":
            record["crd/positive_score"] = -0.05 + 0.01 * record["step"]
            record["crd/z_student"] = -100.0 + 20 * record["step"]
    panels = [panel for panel in curve_panels(records) if panel.title.startswith("diagnostics, signed")]
    assert [(panel.title, list(panel.series)) for panel in panels] == [
        ("diagnostics, signed, |value| up to 140", ["crd/z_student"]),
        ("diagnostics, signed, |value| up to 0.07", ["crd/positive_score"])]


def test_every_panel_has_its_own_title_and_a_labelled_y_axis():
    """Before: a positive and a signed diagnostics panel were both titled "diagnostics", and no y axis said
    what it measured."""
    records = crd_records(evaluate=True)
    for record in records:
        if record["scope"] == "step":
            record["vid/mean_variance"] = -0.5 + 0.1 * record["step"]  # crosses zero: a signed panel
    titles = [axis.get_title() for axis in curves_figure(records).axes]
    assert titles == [LOSS_TITLE, "learning rate", DIAGNOSTICS_LOG, "diagnostics, signed", "per-epoch evaluation"]
    assert [axis.get_ylabel() for axis in curves_figure(records).axes] == [
        "loss", "learning rate", "value", "value", "percent"]


def test_metrics_that_are_not_fractions_stay_numbers_in_their_own_panel():
    records = [{"scope": "step", "step": 1, "lr": 0.1, "loss": 1.0},
               {"scope": "epoch", "step": 1, "epoch": 1, "eval_miou": 0.25, "eval_loss": 1.5}]
    panels = by_title(curve_panels(records))
    assert panels["per-epoch evaluation"].series == {"eval_miou": ([1], [25.0])}
    assert panels["per-epoch evaluation, other metrics"].series == {"eval_loss": ([1], [1.5])}


def test_losses_spanning_decades_get_a_log_scale():
    records = [{"scope": "step", "step": step, "lr": 0.1, "loss": 10.0 ** -step} for step in range(1, 5)]
    assert by_title(curve_panels(records))[LOSS_TITLE].yscale == "log"


def test_teacher_run_panels():
    records = [{"scope": "step", "step": 1, "epoch": 0.5, "lr": 0.1, "ce": 2.3, "seg_ce": 2.5, "loss": 4.8},
               {"scope": "step", "step": 2, "epoch": 1.0, "lr": 0.1, "ce": 2.0, "seg_ce": 1.5, "loss": 3.5},
               {"scope": "epoch", "step": 2, "epoch": 1, "train_loss": 4.1, "time_s": 0.5, "eval_top1": 0.2,
                "eval_miou": 0.1}]
    panels = by_title(curve_panels(records))
    assert list(panels) == [LOSS_TITLE, "learning rate", "per-epoch evaluation"]
    assert list(panels["per-epoch evaluation"].series) == ["eval_top1", "eval_miou"]


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / PLOT
    plot_curves(str(path), crd_records(evaluate=True))
    png = path.read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR" and len(png) > 1000
    assert [p.name for p in tmp_path.iterdir()] == [PLOT]  # written through a temporary, none left behind
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert 400 < width <= 1500 and 300 < height <= 1000  # 4 panels: 2 x 2 at 90 dpi


def test_finish_writes_the_curves_of_an_empty_log(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.log({"scope": "epoch", "step": 0, "epoch": 1, "time_s": 0.1})
    log.finish()
    assert (tmp_path / PLOT).read_bytes()[:8] == PNG_SIGNATURE
    assert [axis.get_title() for axis in curves_figure([]).axes] == ["no metrics logged"]
