"""The tables of sampled networks, as CSV and LaTeX.

*Samples table*: one row per flow (geometry × alignment × coupling, its main sampler) plus the baselines.  Each
row comes from one source's ``summary.json`` (:func:`weightflow.evaluate.stages.evaluate_stage`).  Columns:
accuracy ± std and NLL ± std over single networks, NLL on the canonical last-layer scale ± std, ECE (mean over
networks), diversity (mean pairwise JS divergence, disagreement rate), and BMA accuracy / NLL at
``n = bma_n`` networks.

*Samplers table*: one row per flow and sampler (:func:`weightflow.evaluate.networks.sampler_summary`):
accuracy ± std, NLL ± std, the fraction of collapsed (one-class) networks and the disagreement rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from weightflow.flow.spec import FlowSpec

__all__ = ["BASELINES", "source_label", "samples_table", "samplers_table", "write_table", "write_samplers_table"]

# Non-flow sources, in table order: id → row label.
BASELINES = {"ensemble": "Target", "deep_ensemble": "Deep ensemble", "sgld": "SGLD"}


def source_label(source: str) -> str:
    """Readable label: ``'Target'`` for the ensemble snapshots, ``'geometric / ref0 / ot'`` for a flow."""
    if source in BASELINES:
        return BASELINES[source]
    spec = FlowSpec.parse(source)
    return f"{spec.geometry} / {spec.alignment} / {spec.coupling}"


def _row(summary: Mapping) -> dict:
    source = summary["source"]
    if source in BASELINES:
        parts = {"flow": BASELINES[source], "alignment": "", "coupling": ""}
    else:
        spec = FlowSpec.parse(source)
        parts = {"flow": spec.geometry, "alignment": spec.alignment, "coupling": spec.coupling}
    return {
        **parts,
        "networks": int(summary["num_networks"]),
        "accuracy": summary["accuracy_mean"],
        "accuracy_std": summary["accuracy_std"],
        "nll": summary["nll_mean"],
        "nll_std": summary["nll_std"],
        "nll_canonical": summary["nll_canonical_mean"],
        "nll_canonical_std": summary["nll_canonical_std"],
        "ece": summary["ece_mean"],
        "diversity_js": summary["diversity_js"],
        "disagreement": summary["diversity_disagreement"],
        "bma_n": int(summary["bma_n"]),
        "bma_accuracy": summary["bma_accuracy"],
        "bma_nll": summary["bma_nll"],
    }


def _table_order(row: Mapping) -> tuple:
    """Flows by geometry (euclidean, normalized, geometric), unaligned first, then the baselines."""
    order = {name: i for i, name in enumerate(("euclidean", "normalized", "geometric", *BASELINES.values()))}
    return order.get(row["flow"], len(order)), row["alignment"] != "none", row["alignment"], row["coupling"]


def samples_table(summaries: Iterable[Mapping]) -> pd.DataFrame:
    """One row per source: flows sorted by (geometry, alignment, coupling), then Target / Deep ensemble / SGLD."""
    return pd.DataFrame(sorted((_row(s) for s in summaries), key=_table_order))


def samplers_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """One row per (flow id ``source``, ``sampler``) from :func:`~weightflow.evaluate.networks.sampler_summary`
    rows; flows in samples-table order, each flow's samplers in the given order."""
    table = []
    for position, row in enumerate(rows):
        spec = FlowSpec.parse(row["source"])
        table.append({"flow": spec.geometry, "alignment": spec.alignment, "coupling": spec.coupling,
                      **{k: v for k, v in row.items() if k != "source"}, "_position": position})
    table.sort(key=lambda r: (*_table_order(r), r["_position"]))
    return pd.DataFrame(table).drop(columns="_position")


def _pm(mean: float, std: float, digits: int) -> str:
    return "--" if math.isnan(mean) else f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}"


def _num(value: float, digits: int) -> str:
    return "--" if math.isnan(value) else f"{value:.{digits}f}"


def _write(table: pd.DataFrame, shown: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str,
           label: str, text_columns: int) -> None:
    """``table`` as CSV (all columns, full precision); its formatted version ``shown`` as a LaTeX ``table`` whose
    first ``text_columns`` columns are left-aligned."""
    table.to_csv(csv_path, index=False, float_format="%.6g")
    column_format = "l" * text_columns + "r" * (shown.shape[1] - text_columns)
    Path(tex_path).write_text(shown.to_latex(index=False, caption=caption, label=label, column_format=column_format,
                                             escape=False, position="t"))


def write_table(table: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str, label: str) -> None:
    """Write ``table`` as CSV (all columns, full precision) and as a LaTeX ``table`` (formatted, ± columns)."""
    bma_n = sorted(set(table["bma_n"]))
    bma = f"n={bma_n[0]}" if len(bma_n) == 1 else "n=max"
    shown = pd.DataFrame({
        "Flow": table["flow"].str.replace("_", r"\_"),
        "Alignment": table["alignment"].str.replace("_", r"\_"),
        "Coupling": table["coupling"],
        "Accuracy": [_pm(m, s, 4) for m, s in zip(table["accuracy"], table["accuracy_std"])],
        "NLL": [_pm(m, s, 3) for m, s in zip(table["nll"], table["nll_std"])],
        "NLL (canon.)": [_pm(m, s, 3) for m, s in zip(table["nll_canonical"], table["nll_canonical_std"])],
        "ECE": [_num(v, 3) for v in table["ece"]],
        "JS div.": [_num(v, 4) for v in table["diversity_js"]],
        "Disagr.": [_num(v, 3) for v in table["disagreement"]],
        f"BMA acc. ({bma})": [_num(v, 4) for v in table["bma_accuracy"]],
        f"BMA NLL ({bma})": [_num(v, 3) for v in table["bma_nll"]],
    })
    _write(table, shown, csv_path, tex_path, caption=caption, label=label, text_columns=3)


def write_samplers_table(table: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str,
                         label: str) -> None:
    """Write the samplers table as CSV (full precision) and as a LaTeX ``table`` (± columns)."""
    shown = pd.DataFrame({
        "Flow": table["flow"],
        "Alignment": table["alignment"].str.replace("_", r"\_"),
        "Coupling": table["coupling"],
        "Sampler": table["sampler"].str.replace("_", r"\_"),
        "Accuracy": [_pm(m, s, 4) for m, s in zip(table["accuracy"], table["accuracy_std"])],
        "NLL": [_pm(m, s, 3) for m, s in zip(table["nll"], table["nll_std"])],
        "Collapsed": [_num(v, 3) for v in table["collapsed"]],
        "Disagr.": [_num(v, 3) for v in table["disagreement"]],
    })
    _write(table, shown, csv_path, tex_path, caption=caption, label=label, text_columns=4)
