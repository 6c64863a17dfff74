"""Steps of a multi-run study that are reused when finished: ``crossmodal demo`` and the experiments use them.

Each step writes into its own folder and is skipped when its result is there, so a study stopped at any point
continues where it was when run again; a training run stopped after a checkpoint resumes from it.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Sequence

from crossmodal import run_folder

Say = Callable[[str], None]


def train_or_reuse(verb: str, config: str, overrides: Sequence[str], run_dir: str, say: Say = print) -> str:
    """Train one ``train-teacher`` / ``distill`` run into ``run_dir``; reuse it when finished, resume it when it
    stopped after a checkpoint, start it over when it stopped before one. Returns ``run_dir``."""
    from crossmodal.train.run import run_training

    if run_folder.is_finished(run_dir):
        say(f"      reusing the finished run {run_dir}")
        return run_dir
    if run_folder.has_checkpoint(run_dir):
        say(f"      resuming {run_dir} from its checkpoint")
        run_training(verb, None, [], resume=run_dir)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)  # a start that died before its first checkpoint
    run_training(verb, config, list(overrides), out=run_dir)
    return run_dir


def import_or_reuse(run_dir: str, source: str, say: Say = print, **options: Any) -> str:
    """``crossmodal import-teacher SOURCE --out RUN_DIR`` with ``options`` (see
    :func:`~crossmodal.train.import_teacher.import_teacher`), reused when the folder holds its model card."""
    from crossmodal.train.import_teacher import import_teacher

    if run_folder.is_finished(run_dir):
        say(f"      reusing the imported teacher {run_dir}")
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    say("      " + import_teacher(source, run_dir, **options).line)
    return run_dir


def initialised_or_reuse(run_dir: str, weights: str, modality: str, say: Say = print) -> str:
    """A folder holding ``weights``' architecture with its first convolution adapted to ``modality`` and no
    classifier, not trained (ImageNet initialisation, what RGB-D practitioners start from), reused when there."""
    from crossmodal.train.import_teacher import initialised_folder

    if run_folder.is_finished(run_dir):
        say(f"      reusing {run_dir}")
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    initialised_folder(run_dir, weights, modality)
    return run_dir


def head_or_reuse(run_dir: str, teacher: str, data: str, labels: str, say: Say = print, **options: Any) -> str:
    """``teacher`` with its classifier replaced by a linear head over ``labels``' classes fitted on its frozen
    embedding of ``data``'s training split (:func:`~crossmodal.eval.teacher_head.fit_head` with ``options``),
    written to ``run_dir``; reused when the folder holds its model card."""
    from crossmodal.eval.teacher_head import fit_head
    from crossmodal.train.import_teacher import headed_folder

    if run_folder.is_finished(run_dir):
        say(f"      reusing the teacher with its head {run_dir}")
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    head = fit_head(teacher, data, labels, **options)
    headed_folder(run_dir, teacher, head.weight, head.bias, head.classes, head.record)
    top1 = head.record["test_top1"]
    say(f"      head over {len(head.classes)} classes of '{labels}' on {head.record['fitted_on']['modality']}: "
        f"C {head.record['C']:.3g}, holdout {100 * head.record['holdout_top1']:.1f}%"
        + ("" if top1 is None else f", test {100 * top1:.1f}%"))
    return run_dir


def probe_or_reuse(path: str, options: Any, say: Say = print) -> dict[str, Any]:
    """``crossmodal probe`` with :class:`~crossmodal.eval.probe_run.ProbeOptions`, its JSON written to (or read
    back from) ``path``; a line per stage goes to ``say`` as it finishes."""
    from crossmodal.eval.probe_run import render_table, run_probe

    if os.path.exists(path):
        say(f"      reusing {path}")
        return _read(path)
    result = run_probe(options, json_path=path, say=say)
    say(render_table(result))
    return result


def segment_or_reuse(options: Any, say: Say = print) -> dict[str, Any]:
    """``crossmodal segment`` with :class:`~crossmodal.eval.segment.SegmentOptions` (``out`` set), reusing
    ``out/segment.json``; an interrupted run continues from its protocols' checkpoints (run_segment does)."""
    from crossmodal.eval.segment import format_table, run_segment

    path = os.path.join(options.out, run_folder.SEGMENT_JSON)
    if os.path.exists(path):
        say(f"      reusing {path}")
        return _read(path)
    result = run_segment(options)
    say(format_table(result))
    return result


def _read(path: str) -> dict[str, Any]:
    from crossmodal.eval.report import load_results

    return load_results([path])[0][1]
