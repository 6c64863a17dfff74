"""A study's summary over seeds: its rows, the mean ± std per headline, the share of the scratch-to-oracle gap and
the paired claims, written to ``OUT/report/study.md`` with the final line (``_study.Study`` inherits it)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from _protocol import Headline

from crossmodal.eval.paired import MIN_SEEDS, compare
from crossmodal.eval.report import summarize

FEATURE_METHODS = ("fitnet", "at", "sp", "cc", "rkd", "pkt", "vid", "nst")
BEST_FEATURE = "best feature method"
# The pairwise claims a study checks, seed by seed ("A beats B"); BEST_FEATURE is resolved per study.
CLAIMS = (("crd", "scratch"), ("crd", "kd"), ("crd", "crd-repdistiller"), ("crd+kd", "crd"), ("crd", BEST_FEATURE),
          ("kd", "scratch"), ("supervised", "crd"), ("crd", "imagenet"))
# The pretrained-teacher protocol's two references, evaluated like the students but not distilled: the teacher on
# its own modality (what there is to transfer) and its architecture initialised from ImageNet for modality B.
REFERENCES = ("teacher", "imagenet")
NAMES = {"scratch": "scratch (random init)", "supervised": "supervised on the evaluation's labels (oracle)",
         "kd": "KD", "fitnet": "FitNet", "at": "AT", "sp": "SP", "cc": "CC", "rkd": "RKD", "pkt": "PKT", "vid": "VID",
         "nst": "NST", "crd": "CRD (queue, InfoNCE; ours)",
         "crd-repdistiller": "CRD (RepDistiller's bank and NCE, bare head)", "crd+kd": "CRD+KD",
         "teacher": "the teacher itself, on modality A (reference)",
         "imagenet": "ImageNet init of the teacher's network, input conv adapted, not distilled (reference)",
         "crd-t0.2": "CRD, temperature 0.2 (0.07)", "crd-k256": "CRD, 256 negatives (1,024)",
         "crd-bare-head": "CRD, bare linear heads (BN heads)", "crd-2x-epochs": "CRD, 20 epochs (10)",
         "crd-imagenet-init": "CRD on the teacher's network initialised from ImageNet",
         "crd-imagenet-init-lr0.01": "CRD on the teacher's network initialised from ImageNet, lr 0.01 (0.1)",
         "ce": "CE alone (no distiller)", "dkd": "CE + DKD", "mlld": "CE + MLLD", "c2kd": "CE + C2KD",
         "crd+ce": "CE + CRD"}


def mean_std(values: Mapping[int, float], separator: str, count: str) -> str:
    """``52.3 ± 1.2 (3)`` for per-seed fractions (percent; no spread for one seed; ``–`` for none)."""
    stats = summarize(list(values.values()))
    if stats["mean"] is None:
        return "–"
    spread = f"{separator}{100 * stats['std']:.1f}" if stats["std"] is not None else ""
    return f"{100 * stats['mean']:.1f}{spread}{count.format(n=stats['n'])}"


class StudySummary:
    """The summary half of a study: reads the results of ``self.out`` (``out``, ``protocol``, ``headlines``,
    ``pretrained``, ``scratch`` and the result paths come from :class:`_study.Study`)."""

    # ------------------------------------------------------------------------------------------- the summary
    def values(self, headline: Headline, method: str) -> dict[int, float]:
        """Per seed, the headline number of ``method`` (seeds whose result is missing are left out)."""
        found = {}
        for seed in sorted(set(self.all_seeds())):
            name = f"{method}-s{seed}"
            if headline.source == "probe":
                path = self.probe_path(headline.where, name)
                if not path.exists():
                    continue
                kind, stage = headline.what.split(":")
                rows = [row for row in json.loads(path.read_text())["stages"]
                        if row["stage"] == stage or stage in (row.get("same_as") or [])]
                if rows:
                    found[seed] = float(rows[0][kind]["top1"])
            elif headline.source == "run":
                path = Path(self.out) / name / "model_card.json"
                if path.exists():
                    value = json.loads(path.read_text()).get("final_metrics", {}).get(headline.what)
                    if value is not None:
                        found[seed] = float(value)
            else:
                path = self.segment_path(name)
                if path.exists():
                    scores = json.loads(path.read_text())["results"].get(headline.where)
                    if scores and scores.get(headline.what) is not None:
                        found[seed] = float(scores[headline.what])
        return found

    def row_name(self, method: str) -> str:
        """The table's name of ``method`` (under supervised-student every distiller is added to cross-entropy)."""
        name = NAMES.get(method, method)
        return f"CE + {name}" if self.protocol == "supervised-student" and method in ("kd", *FEATURE_METHODS) else name

    def all_seeds(self) -> list[int]:
        """Every seed with a teacher in the folder (earlier invocations' too); under the pretrained-teacher protocol,
        every seed with a student (the teacher is one for all)."""
        pattern = "teacher-s*" if self.pretrained is None else "*-s*"
        seeds = {path.name.rsplit("-s", 1)[1] for path in Path(self.out).glob(pattern)
                 if path.is_dir() and not path.name.startswith("segment-")}
        return sorted(int(seed) for seed in seeds if seed.isdigit())

    def method_names(self) -> list[str]:
        present = {path.name.rsplit("-s", 1)[0] for path in Path(self.out).glob("*-s*")
                   if path.is_dir() and not path.name.startswith(("teacher-", "segment-"))}
        present |= {"scratch"} if self.scratch else set()
        if self.pretrained is not None:
            present |= {name for name in REFERENCES
                        if any(Path(self.out, "results").glob(f"probe-*-{name}-s*.json"))}
        order = ["scratch", "supervised", "teacher", "imagenet", "ce", "kd", "dkd", "mlld", "c2kd", *FEATURE_METHODS,
                 "crd", "crd-repdistiller", "crd+kd", "crd+ce"]
        return [name for name in order if name in present] + sorted(present - set(order))

    def summary(self, wall_seconds: float) -> tuple[str, str]:
        """The study's markdown summary (mean ± std per headline, paired comparisons) and its final line."""
        methods = self.method_names()
        table = {method: [self.values(headline, method) for headline in self.headlines] for method in methods}
        columns = " | ".join(headline.label for headline in self.headlines)
        rule = "|---|" + "---|" * len(self.headlines)
        lines = [f"# {Path(self.out).name}: protocol {self.protocol}", "",
                 f"Seeds {', '.join(map(str, self.all_seeds()))}; mean ± sample std over seeds (number of seeds), "
                 f"%. Wall time {wall_seconds / 60:.1f} min over {len(self.runs())} invocation(s).", "",
                 f"| student | {columns} |", rule]
        for method in methods:
            cells = [mean_std(values, " ± ", " ({n})") for values in table[method]]
            lines.append(f"| {self.row_name(method)} | " + " | ".join(cells) + " |")
        lines += self.gap_shares(methods, table)
        lines += ["", f"Paired over seeds (same teacher, data and seed in each pair). A - B in points, mean ± std of "
                      f"the per-seed differences, then the seeds where A is ahead. **A** or **B** names the better "
                      f"method when it is ahead in every seed (at least {MIN_SEEDS}) by a mean larger than that std; "
                      f"otherwise a tie.", "", f"| claim | {columns} |", rule]
        for a, b in self.claims(methods, table):
            cells = []
            for first, second in zip(table[a], table[b]):
                if not set(first) & set(second):
                    cells.append("–")
                    continue
                result = compare(first, second)
                verdict = {"A": f"**{a}**", "B": f"**{b}**", "tie": "tie"}[result.verdict]
                spread = f" ± {100 * result.std_difference:.1f}" if result.std_difference is not None else ""
                cells.append(f"{verdict}: {100 * result.mean_difference:+.1f}{spread}, "
                             f"{result.wins}/{len(result.seeds)}")
            lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
        parts = [f"{method}={mean_std(table[method][0], '±', ' ({n} seeds)')}" for method in methods
                 if table[method][0]]
        final = (f"study {self.protocol} [{self.headlines[0].label}]: {' '.join(parts)}; "
                 f"wall={wall_seconds / 60:.1f}min")
        return "\n".join(lines) + "\n", final

    def gap_shares(self, methods: list[str], table: dict) -> list[str]:
        """Markdown lines: per method, the share of the scratch-to-oracle gap its mean closes on each headline,
        (method - scratch) / (oracle - scratch) of the means (100%: the oracle's level; none where the oracle is
        not ahead of scratch)."""
        if "scratch" not in table or "supervised" not in table:
            return []
        means = {m: [summarize(list(values.values()))["mean"] for values in table[m]] for m in methods}
        rows = []
        for method in methods:
            if method in ("scratch", "supervised", "teacher"):  # the teacher reads the other modality
                continue
            cells = []
            for mine, low, high in zip(means[method], means["scratch"], means["supervised"]):
                ok = None not in (mine, low, high) and high > low
                cells.append(f"{100 * (mine - low) / (high - low):+.0f}%" if ok else "–")
            rows.append(f"| {self.row_name(method)} | " + " | ".join(cells) + " |")
        columns = " | ".join(headline.label for headline in self.headlines)
        return ["", "Share of the scratch-to-oracle gap closed: (method - scratch) / (oracle - scratch), of the means.",
                "", f"| student | {columns} |", "|---|" + "---|" * len(self.headlines), *rows]

    def claims(self, methods: list[str], table: dict) -> list[tuple[str, str]]:
        """CLAIMS among the methods present, the best feature method being the one with the highest mean on the
        first headline."""
        if "ce" in methods:  # supervised-student: what each distiller adds over cross-entropy alone
            return [(method, "ce") for method in methods if method != "ce"]
        features = [m for m in methods if m in FEATURE_METHODS and table[m][0]]
        best = max(features, key=lambda m: summarize(list(table[m][0].values()))["mean"], default=None)
        pairs = [(a, best if b == BEST_FEATURE else b) for a, b in CLAIMS]
        return [(a, b) for a, b in pairs if a in methods and b in methods]

    def runs(self) -> list[dict]:
        return json.loads(self.record_path.read_text())["invocations"]

    def summarize(self, wall_seconds: float) -> None:
        """``OUT/report/study.md`` (mean ± std over seeds, paired comparisons) and the final line, printed."""
        from crossmodal.files import atomic_output

        text, final = self.summary(wall_seconds)
        Path(self.out, "report").mkdir(exist_ok=True)  # a study judged by its runs' own top-1 writes no other report
        with atomic_output(Path(self.out) / "report" / "study.md") as temporary:
            Path(temporary).write_text(text + "\n" + final + "\n")
        print(text)
        print(final)
