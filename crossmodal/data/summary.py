"""What ``crossmodal inspect`` reports about a paired file, as one JSON-ready dict, and its text rendering."""
from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from crossmodal.data.codecs import read_physical
from crossmodal.data.format import DEPTH_KINDS, Layout, read_layout
from crossmodal.errors import DataError



def sample_rows(num_samples: int, max_rows: int) -> np.ndarray:
    """Evenly spaced rows, all of them when there are at most ``max_rows``."""
    return np.unique(np.linspace(0, num_samples - 1, min(num_samples, max_rows)).round().astype(np.int64))


def summarize(path: str | os.PathLike, max_rows: int = 512) -> dict[str, Any]:
    """Layout plus value statistics over up to ``max_rows`` evenly spaced rows (all rows of small files).

    Raises:
        DataError: for any malformed part, including label values outside their classes.
    """
    layout = read_layout(path)
    if layout.num_samples == 0:
        raise DataError(layout.path, "holds no samples")
    rows = sample_rows(layout.num_samples, max_rows)
    try:
        with h5py.File(layout.path, "r") as handle:
            modalities = {name: _modality_stats(layout, handle["modalities"][name], rows)
                          for name in layout.modalities}
            labels = {name: _label_stats(layout, name, handle["labels"][name], rows) for name in layout.labels}
    except OSError as err:
        raise DataError(layout.path, f"cannot read the data (truncated or damaged file): {err}") from None
    return {"file": layout.path, "format_version": layout.format_version, "num_samples": layout.num_samples,
            "row_crc32": layout.row_crc32, "rows_examined": int(len(rows)), "modalities": modalities, "labels": labels,
            "splits": layout.splits, "provenance": layout.provenance}


def _modality_stats(layout: Layout, dset: h5py.Dataset, rows: np.ndarray) -> dict[str, Any]:
    info = layout.modalities[dset.name.rsplit("/", 1)[-1]]
    low, high, total, count, nans, infs, zeros = np.inf, -np.inf, 0.0, 0, 0, 0, 0
    for row in rows:
        values = read_physical(dset, row).astype(np.float64)
        finite = values[np.isfinite(values)]
        nans += int(np.isnan(values).sum())
        infs += int(np.isinf(values).sum())
        zeros += int((values == 0).sum())
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
            total, count = total + finite.sum(), count + finite.size
    stats: dict[str, Any] = {
        "shape": list(info.shape), "dtype": info.dtype.name, "kind": info.kind, "units": info.units,
        "stored_range": list(info.value_range) if info.value_range else None,
        "observed_range": [float(low), float(high)] if count else None,
        "mean": float(total / count) if count else None, "codec": info.codec, "checksum": info.checksum}
    if info.scale is not None:
        stats.update(scale=info.scale, clipped_values=info.clipped, nonfinite_as_holes=info.nonfinite)
    if info.kind in DEPTH_KINDS or info.dtype.kind == "f":
        pixels = len(rows) * int(np.prod(info.shape[1:]))
        stats["nan_pixels"] = nans
        stats["inf_pixels"] = infs
        if info.kind in DEPTH_KINDS:
            stats["hole_fraction"] = zeros / pixels
    return stats


def _label_stats(layout: Layout, name: str, dset: h5py.Dataset, rows: np.ndarray) -> dict[str, Any]:
    info = layout.labels[name]
    stats: dict[str, Any] = {"type": info.type, "num_classes": info.num_classes, "class_names": list(info.class_names)}
    if info.type == "class":
        values = dset[()]
        counts = np.bincount(values[values >= 0], minlength=info.num_classes)
        stats["counts"] = {n: int(c) for n, c in zip(info.class_names, counts)}
        stats["unlabelled"] = int((values < 0).sum())
        return stats
    counts = np.zeros(info.num_classes, np.int64)
    void = 0
    for row in rows:
        values = dset[row]
        is_void = values == info.ignore_index
        void += int(is_void.sum())
        valid = values[~is_void]
        if valid.size and valid.max() >= info.num_classes:
            raise DataError(layout.path, f"label set '{name}' row {row} has class id {valid.max()} "
                                         f">= num_classes {info.num_classes}")
        counts += np.bincount(valid.ravel(), minlength=info.num_classes)
    stats["ignore_index"] = info.ignore_index
    stats["pixel_counts"] = {n: int(c) for n, c in zip(info.class_names, counts)}
    stats["void_fraction"] = void / max(1, void + int(counts.sum()))
    return stats


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_text(summary: dict[str, Any]) -> str:
    """A human-readable report of :func:`summarize`'s dict."""
    lines = [f"{summary['file']}",
             f"  format version {summary['format_version']}"
             f"{', a CRC-32 per row' if summary.get('row_crc32') else ', no row CRC-32s (repack adds them)'}, "
             f"{summary['num_samples']} samples "
             f"(value statistics over {summary['rows_examined']} rows)", "  modalities:"]
    for name, stats in summary["modalities"].items():
        observed = stats["observed_range"]
        line = (f"    {name:<10} {tuple(stats['shape'])} {stats['dtype']:<7} kind={stats['kind']}"
                f"{' units=' + stats['units'] if stats['units'] else ''}"
                f"  range [{_fmt(observed[0])}, {_fmt(observed[1])}] mean {_fmt(stats['mean'])}" if observed
                else f"    {name:<10} {tuple(stats['shape'])} {stats['dtype']} "
                     f"{'(not examined)' if not summary['rows_examined'] else '(no finite values)'}")
        if "hole_fraction" in stats:
            line += f"  holes {100 * stats['hole_fraction']:.2f}%"
        if "scale" in stats:
            line += f"  stored x {stats['scale']:g}"
            if stats["clipped_values"] or stats["nonfinite_as_holes"]:
                line += (f" ({stats['clipped_values']} values clipped to the stored range, "
                         f"{stats['nonfinite_as_holes']} non-finite written as holes)")
        line += f"  codec {stats['codec']}{', checksummed' if stats['checksum'] else ', no checksum'}"
        if "nan_pixels" in stats:
            line += f"  NaN pixels {stats['nan_pixels']}"
            if stats["inf_pixels"]:
                line += f"  infinite pixels {stats['inf_pixels']}"
        lines.append(line)
    if summary["labels"]:
        lines.append("  labels:")
    for name, stats in summary["labels"].items():
        counts = stats.get("counts") or stats.get("pixel_counts")
        shown = ", ".join(f"{n} {c}" for n, c in list(counts.items())[:8])
        more = f", ... ({len(counts) - 8} more)" if len(counts) > 8 else ""
        if stats["type"] == "class":
            extra = f", {stats['unlabelled']} unlabelled" if stats["unlabelled"] else ""
            lines.append(f"    {name:<10} class, {stats['num_classes']} classes{extra}: {shown}{more}")
        else:
            lines.append(f"    {name:<10} segmentation, {stats['num_classes']} classes, ignore index "
                         f"{stats['ignore_index']} ({100 * stats['void_fraction']:.1f}% void pixels); "
                         f"pixels: {shown}{more}")
    check = summary.get("verify")
    if check is not None:
        if check["damaged_rows"]:
            for name, rows in check["damaged_rows"].items():
                shown = ", ".join(str(r) for r in rows[:10]) + (f" ... ({len(rows)} in all)" if len(rows) > 10 else "")
                lines.append(f"  verify: {name}: damaged rows {shown}: {check['reasons'][name]}")
        else:
            lines.append(f"  verify: all {check['chunks_read']} chunks read back intact")
    lines.append("  splits: " + (", ".join(f"{n} {c}" for n, c in summary["splits"].items()) or "none"))
    provenance = summary["provenance"]
    if provenance:
        lines.append("  provenance:")
        lines += [f"    {key}: {value}" for key, value in provenance.items()]
    return "\n".join(lines)
