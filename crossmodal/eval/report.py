"""Collect probe and segmentation results, average them over seeds, and write a readable report.

Reads the JSON files written by ``crossmodal probe`` (``crossmodal-probe/1``) and ``crossmodal segment``
(``crossmodal-segment/1``). Runs are grouped by data set, label set and modality, never averaged across them;
within a group, the runs of one method (one per seed) give mean +- sample std.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from crossmodal.errors import DataError
from crossmodal.eval.report_plots import plot_probe, plot_segmentation, protocol_order, stage_order

PROBE_FORMAT = "crossmodal-probe/1"
SEGMENT_FORMAT = "crossmodal-segment/1"
REPORT_FORMAT = "crossmodal-report/1"
FORMATS = (PROBE_FORMAT, SEGMENT_FORMAT)
MAX_DEPTH = 4  # folder levels searched below each PATH
PROBE_KINDS = ("linear", "knn")
SEGMENT_METRICS = (("pixel_acc", "pixel acc"), ("mean_class_acc", "mean class acc"), ("miou", "mIoU"))
_REQUIRED = {PROBE_FORMAT: ("method", "seed", "data", "labels", "stages"),
             SEGMENT_FORMAT: ("method", "seed", "data", "labels", "results")}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(path, f"cannot read it as JSON ({str(err).splitlines()[0]})") from None


def _check(path: Path, result: dict) -> dict:
    missing = [key for key in _REQUIRED[result["format"]] if key not in result]
    if missing:
        raise DataError(path, f"{result['format']} result lacks {', '.join(missing)}")
    for key in ("method", "data", "labels"):
        if not isinstance(result[key], str):
            raise DataError(path, f"'{key}' must be a string, got {result[key]!r}")
    classes = result.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise DataError(path, f"'classes' must be a list of class names or null, got {classes!r}")
    if not isinstance(result["seed"], int) or isinstance(result["seed"], bool):
        raise DataError(path, f"'seed' must be an integer, got {result['seed']!r}")
    if result["format"] == PROBE_FORMAT:
        stages = result["stages"]
        if not isinstance(stages, list) or not all(
                isinstance(stage, dict) and "stage" in stage
                and all(isinstance(stage.get(kind, {}), dict) for kind in PROBE_KINDS) for stage in stages):
            raise DataError(path, "'stages' must be a list of objects with 'stage', 'linear' and 'knn'")
    elif not isinstance(result["results"], dict) or not all(isinstance(scores, dict)
                                                            for scores in result["results"].values()):
        raise DataError(path, "'results' must map each protocol to an object of scores")
    return result


def _json_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        if len(Path(root).relative_to(folder).parts) >= MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
        found += [Path(root) / name for name in sorted(files) if name.endswith(".json")]
    return found


def load_results(paths: Iterable[str | os.PathLike], left_out: Optional[list[str]] = None) -> list[tuple[str, dict]]:
    """Read the probe and segmentation results named by ``paths`` (files, or folders searched for them).

    A folder contributes every ``*.json`` of a known format up to ``MAX_DEPTH`` levels down; other JSON files
    there (configs, summaries) are skipped. One that cannot be read as JSON (a truncated copy, a damaged disk)
    may be a result, so it is left out with a warning line naming it, and ``left_out`` gets that line: the report
    goes on with the other runs (each cell shows its n) and lists it, rather than stopping a report over many
    seeds for one file, or averaging fewer runs without a word. A file given by name must be a result.

    Args:
        paths: result files and folders, in the order given (a later duplicate run wins).
        left_out: receives ``PATH: why`` for each file of a folder left out as unreadable.

    Returns:
        ``(file, result)`` pairs in input order.

    Raises:
        DataError: a missing path, a folder without results, or a named file that is not a result.

    Examples:
        >>> load_results(["runs/"])  # doctest: +SKIP
        [('runs/a/probe.json', {'format': 'crossmodal-probe/1', ...}), ...]
    """
    loaded = []
    for given in map(Path, paths):
        if given.is_dir():
            found = []
            for path in _json_files(given):
                try:
                    result = _read(path)
                except DataError as err:
                    _leave_out(path, err.problem, left_out)
                    continue
                if isinstance(result, dict) and result.get("format") in FORMATS:
                    found.append((str(path), _check(path, result)))
            if not found:
                raise DataError(given, f"no {' or '.join(FORMATS)} JSON files found (searched {MAX_DEPTH} "
                                       "levels deep)")
            loaded += found
        elif given.exists():
            result = _read(given)
            fmt = result.get("format") if isinstance(result, dict) else None
            if fmt not in FORMATS:
                raise DataError(given, f"not a probe or segmentation result (format {fmt!r}, expected "
                                       f"{' or '.join(FORMATS)})")
            loaded.append((str(given), _check(given, result)))
        else:
            raise DataError(given, "no such file or folder")
    return loaded


def _leave_out(path: Path, problem: str, left_out: Optional[list[str]]) -> None:
    """Warn about an unreadable JSON file of a folder (naming the result format it mentions, if any)."""
    try:
        head = path.read_bytes()[:4096].decode("utf-8", "replace")
    except OSError:
        head = ""
    kind = next((f"a damaged {fmt} result: " for fmt in FORMATS if fmt in head), "")
    line = f"{path}: {kind}{problem}"
    print(f"crossmodal report: warning: {line}; left out of the report", file=sys.stderr)
    if left_out is not None:
        left_out.append(line)


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for one value) and count of the finite ``values``.

    Examples:
        >>> summarize([0.25, 0.75])
        {'mean': 0.5, 'std': 0.3535533905932738, 'n': 2}
    """
    values = [float(value) for value in values if value is not None and math.isfinite(value)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def method_order(methods: Iterable[str]) -> list[str]:
    """'scratch' first, then 'supervised', then the rest alphabetically.

    Examples:
        >>> method_order(["crd", "supervised", "cmc", "scratch"])
        ['scratch', 'supervised', 'cmc', 'crd']
    """
    first = {"scratch": 0, "supervised": 1}
    return sorted(set(methods), key=lambda method: (first.get(method, 2), method))


def _deduplicate(results: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Keep the last run per (format, data, labels, modality, method, seed), warning about the others."""
    kept: dict[tuple, tuple[str, dict]] = {}
    for path, result in results:
        key = (result["format"], result["data"], result["labels"], _classes(result), result.get("modality"),
               result["method"], result["seed"])
        if key in kept:
            print(f"crossmodal report: warning: method {result['method']!r} seed {result['seed']} appears twice "
                  f"({kept[key][0]}, {path}); using {path}", file=sys.stderr)
            del kept[key]  # re-inserted below, at its later position
        kept[key] = (path, result)
    return list(kept.values())


def _group(results: list[tuple[str, dict]], fmt: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for _, result in results:
        if result["format"] == fmt:
            groups.setdefault((result["data"], result["labels"], _classes(result), result.get("modality")),
                              []).append(result)
    return groups


def _classes(result: dict) -> Optional[tuple[str, ...]]:
    """The class subset a probe was scored on (None: every class of its label set)."""
    classes = result.get("classes")
    return tuple(classes) if classes else None


def _probe_table(runs: list[dict]) -> dict:
    methods = {}
    for method in method_order(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        entry: dict[str, Any] = {"seeds": sorted(run["seed"] for run in mine)}
        for kind in PROBE_KINDS:
            stages = stage_order(str(stage["stage"]) for run in mine for stage in run["stages"] if kind in stage)
            entry[kind] = {stage: summarize([entry_stage[kind].get("top1") for run in mine
                                             for entry_stage in run["stages"]
                                             if str(entry_stage["stage"]) == stage and kind in entry_stage])
                           for stage in stages}
        methods[method] = entry
    chances = sorted({run["chance"] for run in runs if isinstance(run.get("chance"), (int, float))})
    stage_rows = [(run, stage) for run in runs for stage in run["stages"]]
    solvers = sorted({str(stage.get("linear", {}).get("solver")) for _, stage in stage_rows
                      if stage.get("linear", {}).get("solver")})
    not_converged = [f"{run['method']} seed {run['seed']} stage {stage['stage']}" for run, stage in stage_rows
                     if stage.get("linear", {}).get("converged") is False]
    same_as = {str(stage["stage"]): sorted({str(name) for name in stage.get("same_as") or []})
               for _, stage in stage_rows if stage.get("same_as")}
    return {"data": runs[0]["data"], "labels": runs[0]["labels"], "classes": runs[0].get("classes"),
            "modality": runs[0].get("modality"), "chance": chances[0] if len(chances) == 1 else chances or None, "methods": methods,
            "solvers": solvers, "not_converged": not_converged, "same_as": same_as}


def _segment_table(runs: list[dict]) -> dict:
    methods = {}
    for method in method_order(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        entry: dict[str, Any] = {"seeds": sorted(run["seed"] for run in mine)}
        for protocol in protocol_order(name for run in mine for name in run["results"]):
            scores = [run["results"][protocol] for run in mine if protocol in run["results"]]
            entry[protocol] = {metric: summarize([score.get(metric) for score in scores])
                               for metric, _ in SEGMENT_METRICS}
        methods[method] = entry
    return {"data": runs[0]["data"], "labels": runs[0]["labels"], "modality": runs[0].get("modality"),
            "methods": methods}


def aggregate(results: list[tuple[str, dict]], title: str = "crossmodal report") -> dict:
    """The numbers of a report: per (data, labels, modality) group, per method, mean/std/n of each metric.

    Values stay fractions (0.724, not 72.4); duplicate (method, seed) runs keep the last one given.

    Args:
        results: ``(file, result)`` pairs from :func:`load_results`.
        title: the report's heading.

    Examples:
        >>> report = aggregate(load_results(["runs/"]))  # doctest: +SKIP
        >>> report["probe"][0]["methods"]["crd"]["linear"]["embedding"]  # doctest: +SKIP
        {'mean': 0.72, 'std': 0.02, 'n': 3}
    """
    results = _deduplicate(results)
    return {"format": REPORT_FORMAT, "title": title,
            "inputs": [{"file": path, "format": result["format"], "method": result["method"],
                        "seed": result["seed"], "checkpoint": result.get("checkpoint"),
                        "random_init": result.get("random_init")} for path, result in results],
            "probe": [_probe_table(runs) for runs in _group(results, PROBE_FORMAT).values()],
            "segment": [_segment_table(runs) for runs in _group(results, SEGMENT_FORMAT).values()]}


def format_cell(summary: dict | None) -> str:
    """A summary as a percentage with one decimal: ``72.0 ± 2.0 (n=3)``, ``72.0 (n=1)``, or ``–``.

    Examples:
        >>> format_cell({"mean": 0.72, "std": 0.02, "n": 3})
        '72.0 ± 2.0 (n=3)'
    """
    if not summary or summary["mean"] is None:
        return "–"
    spread = f" ± {100 * summary['std']:.1f}" if summary["std"] is not None else ""
    return f"{100 * summary['mean']:.1f}{spread} (n={summary['n']})"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _where(table: dict) -> str:
    modality = f", modality `{table['modality']}`" if table["modality"] is not None else ""
    classes = f" (classes {', '.join(table['classes'])} only)" if table.get("classes") else ""
    return f"data `{table['data']}`, labels `{table['labels']}`{classes}{modality}"


def render_markdown(report: dict) -> str:
    """The report as markdown: one linear and one kNN table per probe group, one table per segmentation group.

    Examples:
        >>> print(render_markdown(aggregate(load_results(["runs/"]))))  # doctest: +SKIP
    """
    lines = [f"# {report['title']}", ""]
    for table in report["probe"]:
        for kind, name in (("linear", "Linear probe"), ("knn", "kNN probe")):
            stages = stage_order(stage for entry in table["methods"].values() for stage in entry[kind])
            if not stages:
                continue
            same_as = table.get("same_as", {})
            header = ["method"] + [(stage if stage == "embedding" else f"stage {stage}")
                                   + (f" (= stage {', '.join(same_as[stage])})" if same_as.get(stage) else "")
                                   for stage in stages]
            rows = [[method] + [format_cell(entry[kind].get(stage)) for stage in stages]
                    for method, entry in table["methods"].items()]
            lines += [f"## {name} top-1 (%): {_where(table)}", ""] + _markdown_table(header, rows)
            chance = table["chance"]
            if chance is not None:
                shown = ", ".join(f"{100 * value:.1f}%" for value in (chance if isinstance(chance, list)
                                                                       else [chance]))
                lines += ["", f"Chance level: {shown}"]
            if kind == "linear":
                lines += _solver_notes(table)
            lines.append("")
    for table in report["segment"]:
        protocols = protocol_order(name for entry in table["methods"].values() for name in entry if name != "seeds")
        header = ["method"] + [f"{protocol} {label}" for protocol in protocols for _, label in SEGMENT_METRICS]
        rows = [[method] + [format_cell(entry.get(protocol, {}).get(metric)) for protocol in protocols
                            for metric, _ in SEGMENT_METRICS] for method, entry in table["methods"].items()]
        lines += [f"## Segmentation (%): {_where(table)}", ""] + _markdown_table(header, rows) + [""]
    lines += ["## Inputs", ""]
    lines += [f"- `{item['file']}`: {item['format'].split('/')[0].split('-')[1]}, method `{item['method']}`, "
              f"seed {item['seed']}, checkpoint `{item['checkpoint']}`"
              + (" (random init)" if item["random_init"] else "") for item in report["inputs"]]
    if report.get("left_out"):
        lines += ["", "## Left out (unreadable)", ""] + [f"- {line}" for line in report["left_out"]]
    if report.get("plots"):
        lines += ["", "## Plots"] + [line for name in report["plots"] for line in ("", f"![{name}]({name})")]
    return "\n".join(lines) + "\n"


def _solver_notes(table: dict) -> list[str]:
    """Which solver fitted the linear probes (a warning when runs differ) and the fits that did not converge."""
    notes = []
    solvers = table.get("solvers") or []
    if len(solvers) == 1:
        notes.append(f"Linear probes fitted by the `{solvers[0]}` solver, C chosen on a train holdout.")
    elif len(solvers) > 1:
        notes.append(f"Warning: these runs were probed by different solvers ({', '.join(solvers)}); their C "
                     f"searches differ, so small differences between methods may come from the solver.")
    if table.get("not_converged"):
        notes.append("Stopped at the iteration cap before converging: " + "; ".join(table["not_converged"]) + ".")
    return ["", *notes] if notes else []


def write_report(paths: Iterable[str | os.PathLike], out: str | os.PathLike,
                 title: str = "crossmodal report") -> dict:
    """Read results, write ``report.md``, ``report.json`` and the PNG plots into ``out``; return the report.

    Plots are written only for the kinds present: ``probe_linear.png`` and ``probe_knn.png`` for probes,
    ``segmentation_miou.png`` for segmentation.

    Args:
        paths: result files and folders (see :func:`load_results`).
        out: output folder, created if missing.
        title: the report's heading.

    Examples:
        >>> write_report(["runs/"], "report/")  # doctest: +SKIP
    """
    from crossmodal.files import ensure_folder

    left_out: list[str] = []
    report = aggregate(load_results(paths, left_out), title)
    report["left_out"] = left_out
    out = Path(ensure_folder(out))
    import matplotlib

    matplotlib.use("Agg")
    files = []
    if report["probe"]:
        for kind in PROBE_KINDS:
            if any(entry[kind] for table in report["probe"] for entry in table["methods"].values()):
                plot_probe(report, kind, out / f"probe_{kind}.png")
                files.append(f"probe_{kind}.png")
    if report["segment"]:
        plot_segmentation(report, out / "segmentation_miou.png")
        files.append("segmentation_miou.png")
    report["plots"] = files
    from crossmodal.files import atomic_output

    for name, text in (("report.json", json.dumps(report, indent=2) + "\n"), ("report.md", render_markdown(report))):
        with atomic_output(out / name) as temporary:
            Path(temporary).write_text(text)
    return report
