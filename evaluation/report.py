"""Stored posteriors -> the paper's tables (3: single scale, 4: multi-scale, 5: dense vs multi-crop, 6: fusion),
the per-cell metrics, and a plot of error against Q; as markdown, CSV and PNG.

Every number is computed from stored per-image posteriors: a combination (multi-scale, multi-crop & dense, fusion) is
the average of the posteriors it combines (Sec. 3.2, 4.2-4.4), never re-run through a net.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.methods import (COMBINED, DENSE, DENSE_NOFLIP, METHODS, MULTICROP, RunningMean, label, short_name,
                                topk_errors, view_of)
from evaluation.models import LoadedModel
from evaluation.posteriors import Posteriors

ERR_COLUMNS = ["top-1 err (%)", "top-5 err (%)"]
# No "." in a column name: MLflow's table view reads a column name with a dot as a path into nested data (TanStack
# Table's accessorKey), so "ConvNet config." rendered as a blank column there.
NET_COLUMNS = ["ConvNet config", "train S", "test Q", "method", *ERR_COLUMNS]
MAX_FUSION_SUBSETS = 4  # up to this many nets, every subset of two or more is fused; above it, all nets together

Loader = Callable[[str, int, str], Posteriors]  # (model id, Q, view) -> posteriors, rows in key order


class ReportError(ValueError):
    """Posteriors that cannot be combined (different images); one line."""


@dataclass
class Table:
    """A titled table of strings and numbers."""

    name: str
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def markdown(self) -> str:
        """GitHub markdown, numbers to two decimals."""
        cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in self.rows]
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV with a header row, numbers at full precision."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buf.getvalue()

    def columns_dict(self) -> dict[str, list]:
        """Column name -> values (MLflow's log_table format)."""
        return {c: [row[i] for row in self.rows] for i, c in enumerate(self.columns)}


@dataclass(frozen=True)
class Cell:
    """One evaluated (net, Q, method) with its errors; the unit of the MLflow child runs."""

    model: LoadedModel
    q: int
    method: str
    top1_err: float
    top5_err: float
    images: int
    extra: dict[str, float] = field(default_factory=dict)  # e.g. dense's no-flip errors
    flip: bool = True  # evaluated with horizontal flips (dense flip-averaged, 50 crops per scale)

    def metrics(self) -> dict[str, float]:
        """Metrics of the child run: errors in %, as the paper gives them (dense with flips adds its unflipped half)."""
        out = {"top1_err_pct": pct(self.top1_err), "top5_err_pct": pct(self.top5_err), "images": float(self.images)}
        if self.extra:
            out.update({"top1_err_pct_noflip": pct(self.extra["top1_err_noflip"]),
                        "top5_err_pct_noflip": pct(self.extra["top5_err_noflip"])})
        return out


@dataclass
class Report:
    """Everything the sweep reports: per-cell metrics, the four tables, combination metrics."""

    cells: list[Cell]
    tables: list[Table]
    summary: dict[str, float]  # metric name -> error in %, for the parent run

    def markdown(self) -> str:
        """All tables, one after the other."""
        return "\n".join(t.markdown() for t in self.tables if t.rows)

    def write(self, directory: Path) -> list[Path]:
        """Write tables (.md, .csv), the cell list and the plot into ``directory``; returns the files."""
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for t in self.tables:
            for ext, text in (("md", t.markdown()), ("csv", t.csv())):
                path = directory / f"{t.name}.{ext}"
                path.write_text(text)
                files.append(path)
        path = directory / "cells.csv"
        path.write_text(cells_table(self.cells).csv())
        files.append(path)
        path = directory / "error_vs_q.png"
        path.write_bytes(plot(self.cells))
        return [*files, path]


def errors(p: Posteriors) -> tuple[float, float]:
    """(top-1, top-5) error of posteriors against their labels."""
    e = topk_errors(p.probs, p.labels)
    return e[1], e[5]


def combine(parts: Iterable[Posteriors]) -> Posteriors:
    """The average of posteriors of the same images (keys must match row for row), taken one part at a time: a
    generator of loads is combined holding one part in memory, not all of them (a full sweep's do not fit)."""
    mean, keys, labels = RunningMean(), None, None
    for p in parts:
        if keys is None:
            keys, labels = p.keys, p.labels
        elif p.keys.shape != keys.shape or not np.array_equal(p.keys, keys):
            raise ReportError("posteriors to combine cover different images (was the split changed mid-sweep?)")
        mean.add(p.probs)
        del p  # let it go before the next part is loaded
    return Posteriors(keys, labels, mean.result())


def method_posteriors(load: Loader, model_id: str, qs: Sequence[int], method: str, flip: bool = True) -> Posteriors:
    """A method's posteriors (with or without flips) averaged over the scales ``qs``; multi-crop & dense averages both
    methods' (Sec. 4.3)."""
    views = [view_of(m, flip) for m in ((DENSE, MULTICROP) if method == COMBINED else (method,))]
    return combine(load(model_id, q, v) for q in qs for v in views)


def pct(x: float) -> float:
    """A fraction as a percentage."""
    return 100.0 * x


def reported_methods(methods: Sequence[str]) -> list[str]:
    """The computed methods, plus their combination when both were computed."""
    out = [m for m in METHODS if m in methods]
    return out + [COMBINED] if len(out) == 2 else out


def q_list(qs: Sequence[int]) -> str:
    """Scales as the paper lists them: 256,384,512."""
    return ",".join(map(str, qs))


def cells_table(cells: Sequence[Cell]) -> Table:
    """Every (net, Q, method) cell, with dense's no-flip errors."""
    t = Table("cells", "Every evaluated cell (net, test scale Q, method)",
              ["model", "model id", "train S", "test Q", "method", *ERR_COLUMNS, "images"])
    for c in cells:
        t.rows.append([c.model.label, c.model.model_id, c.model.scale, c.q, label(c.method, c.flip), pct(c.top1_err),
                       pct(c.top5_err), c.images])
    return t


def build_report(models: Sequence[LoadedModel], scales: dict[str, tuple[int, ...]], methods: Sequence[str],
                 load: Loader, flips: Mapping[str, bool] | None = None) -> Report:
    """Cells and Tables 3-6 from stored posteriors (``scales``: model id -> its evaluated Q, ascending; ``flips``:
    model id -> evaluated with flips, by default as each net was trained)."""
    flips = flips if flips is not None else {m.model_id: m.card.flip for m in models}
    shown = reported_methods(methods)
    cells: list[Cell] = []
    t3 = Table("table3_single_scale", "Table 3: single test scale",
               NET_COLUMNS)
    t4 = Table("table4_multi_scale", "Table 4: multiple test scales (posteriors averaged over Q)",
               NET_COLUMNS)
    t5 = Table("table5_dense_vs_multicrop", "Table 5: dense vs multi-crop evaluation",
               NET_COLUMNS)
    summary: dict[str, float] = {}
    for m in models:
        qs, flip = scales[m.model_id], flips[m.model_id]
        for q in qs:
            for method in shown:
                p = method_posteriors(load, m.model_id, [q], method, flip)
                top1, top5 = errors(p)
                extra = {}
                if method == DENSE and flip:
                    nf1, nf5 = errors(load(m.model_id, q, DENSE_NOFLIP))
                    extra = {"top1_err_noflip": nf1, "top5_err_noflip": nf5}
                cells.append(Cell(m, q, method, top1, top5, len(p.keys), extra, flip))
                if method in METHODS:
                    t3.rows.append([m.card.arch, m.scale, q, label(method, flip), pct(top1), pct(top5)])
                if extra:  # what the trainer's validation reports; the right view where mirrors differ
                    t3.rows.append([m.card.arch, m.scale, q, label(DENSE, False), pct(nf1), pct(nf5)])
        for method in shown:
            top1, top5 = errors(method_posteriors(load, m.model_id, qs, method, flip))
            row = [m.card.arch, m.scale, q_list(qs), label(method, flip), pct(top1), pct(top5)]
            if len(qs) > 1 and method in METHODS:
                t4.rows.append(row)
            if len(shown) > 1:
                t5.rows.append(row)
            summary.update(summary_metrics(net_key(m), f"{metric_method(method)} Q{'-'.join(map(str, qs))}", top1,
                                           top5))
    t6 = fusion_table(models, scales, flips, shown, load, summary)
    return Report(cells, [t3, t4, t5, t6], summary)


def fusion_sets(n: int) -> list[tuple[int, ...]]:
    """Which nets are fused: every subset of two or more for a few nets, else all of them together."""
    if n < 2:
        return []
    if n > MAX_FUSION_SUBSETS:
        return [tuple(range(n))]
    return [c for k in range(2, n + 1) for c in itertools.combinations(range(n), k)]


def fusion_table(models: Sequence[LoadedModel], scales: dict[str, tuple[int, ...]], flips: Mapping[str, bool],
                 shown: Sequence[str], load: Loader, summary: dict[str, float]) -> Table:
    """Table 6: nets fused by averaging their (multi-scale) posteriors, per method; each net with its own flips.
    When the nets differ in flips, each is marked with its own and the method column names the method alone."""
    t = Table("table6_fusion", "Table 6: ConvNet fusion (posteriors averaged over nets)",
              ["combined models", "method", *ERR_COLUMNS])
    for subset in fusion_sets(len(models)):
        chosen = [models[i] for i in subset]
        same = len({flips[m.model_id] for m in chosen}) == 1
        marks = {m.model_id: "" if same else " with flips" if flips[m.model_id] else " without flips" for m in chosen}
        name = ", ".join(f"({m.label}/{q_list(scales[m.model_id])}{marks[m.model_id]})" for m in chosen)
        for method in shown:
            fused = combine(method_posteriors(load, m.model_id, scales[m.model_id], method, flips[m.model_id])
                            for m in chosen)
            top1, top5 = errors(fused)
            t.rows.append([name, label(method, flips[chosen[0].model_id]) if same else short_name(method), pct(top1),
                           pct(top5)])
            nets = " and ".join(net_key(m) for m in chosen)
            summary.update(summary_metrics("fusion", f"{nets} {metric_method(method)}", top1, top5))
    return t


def net_name(m: LoadedModel, jittered: str = "S[{},{}]") -> str:
    """A net as run names write it: ``A S256`` or ``A S[256,512]`` (and the id that ``label_models`` gave it, if any)."""
    s = m.card.train_scale
    text = f"{m.card.arch} " + (jittered.format(s.smin, s.smax) if s.jittered else f"S{s.smin}")
    suffix = m.label.partition(" ")[2]  # "(1a2b3c)" for two nets of the same config and S
    return f"{text} {suffix}" if suffix else text


def net_key(m: LoadedModel) -> str:
    """A net in a metric name, where brackets and commas are not allowed: ``A S256``, ``A S256-512``."""
    return metric_key(net_name(m, "S{}-{}").replace("(", "").replace(")", ""))


def metric_method(method: str) -> str:
    """A method in a metric name: dense, multi-crop, multi-crop and dense."""
    return short_name(method).replace("&", "and")


def summary_metrics(group: str, what: str, top1: float, top5: float) -> dict[str, float]:
    """The parent run's two metrics of one result, in %, grouped by net (or fusion) as MLflow's charts group them:
    ``A S256-512/multi-crop Q256-384-512 top1_err_pct``."""
    return {metric_key(f"{group}/{what} top{k}_err_pct"): pct(e) for k, e in ((1, top1), (5, top5))}


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric key (letters, digits, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def plot(cells: Sequence[Cell]) -> bytes:
    """PNG: top-1 and top-5 error against Q, one line per net and method."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    lines: dict[tuple[str, str, bool], list[Cell]] = {}
    for c in cells:
        lines.setdefault((c.model.label, c.method, c.flip), []).append(c)
    styles = {DENSE: "o-", MULTICROP: "s--", COMBINED: "^:"}
    for ax, (what, attr) in zip(axes, (("top-1", "top1_err"), ("top-5", "top5_err"))):
        for (net, method, flip), group in lines.items():
            group = sorted(group, key=lambda c: c.q)
            ax.plot([c.q for c in group], [pct(getattr(c, attr)) for c in group], styles.get(method, "o-"),
                    label=f"{net} {label(method, flip)}")
        ax.set_xlabel("test scale Q (px)")
        ax.set_ylabel(f"{what} error (%)")
        ax.set_title(f"{what} error against test scale")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
