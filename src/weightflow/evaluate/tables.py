"""The tables of sampled networks, as CSV and LaTeX.

*Samples table* (:func:`samples_table`): one row per evaluation source, from its ``summary.json``
(:func:`weightflow.evaluate.stages.evaluate_stage`), in three blocks:

1. every flow's **own** samples (the sampler chosen on the validation split, never guided), flows in
   geometry-registry order, then alignment, coupling; the variants of one flow (another vector field, the
   thesis' canonical form) right after it;
2. the baselines (:data:`weightflow.names.BASELINES`: Target, its canonical copies, deep ensemble, SGLD, ...);
3. every guided sample set, each followed by its **guidance-alone control** (same sampler, prior draws and λ,
   the flow's velocity replaced by zero).

Columns: identification (flow, alignment, coupling, vector field, canonical form, samples, sampler), accuracy ±
std and NLL ± std over single networks, ECE, Brier, diversity (mean pairwise JS divergence, disagreement), BMA
accuracy / NLL at ``n = bma_n``; then the temperature ``T`` fitted on the validation split and the same
probability-based metrics at ``T`` (suffix ``_cal``), which compare sources whose logits live on different
scales.

*Samplers table* (:func:`samplers_table`): one row per flow and sampler candidate (every configured sampler;
every guided sampler at every λ of the grid, with its control), scored on the evaluation split, next to the
validation score the selection used and the selection it made.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from weightflow.flow.spec import GEOMETRY_NAMES, FlowSpec
from weightflow.names import BASELINES, SAMPLE_KINDS, split_source

__all__ = ["source_label", "samples_table", "samplers_table", "write_table", "write_samplers_table", "TABLE_BLOCKS"]

TABLE_BLOCKS = ("flow samples", "baselines", "guided")


def source_label(source: str) -> str:
    """Readable label: ``'Target'`` for the ensemble snapshots, ``'geometric / ref0 / ot'`` for a flow's own samples,
    ``'geometric / ref0 / ot / ngt (guided)'`` for a variant's guided samples."""
    name, kind = split_source(source)
    if kind is None:
        return BASELINES[name].label
    spec = FlowSpec.parse(name)
    label = " / ".join(p for p in (spec.geometry, spec.alignment, spec.coupling, spec.variant) if p)
    return label if kind == "main" else f"{label} ({SAMPLE_KINDS[kind].label})"


def _identity(summary: Mapping) -> dict:
    source = summary["source"]
    name, kind = split_source(source)
    if kind is None:
        return {"block": "baselines", "flow": BASELINES[name].label, "alignment": "", "coupling": "", "field": "",
                "last_layer": summary.get("last_layer", ""), "variant": "", "samples": "", "sampler": ""}
    spec = FlowSpec.parse(name)
    return {"block": "flow samples" if kind == "main" else "guided", "flow": spec.geometry,
            "alignment": spec.alignment, "coupling": spec.coupling, "field": summary.get("model", ""),
            "last_layer": summary.get("last_layer", ""), "variant": spec.variant or "",
            "samples": SAMPLE_KINDS[kind].label, "sampler": summary.get("candidate", "")}


METRIC_COLUMNS = {
    "accuracy": "accuracy_mean", "accuracy_std": "accuracy_std", "nll": "nll_mean", "nll_std": "nll_std",
    "ece": "ece_mean", "brier": "brier_mean", "diversity_js": "diversity_js",
    "disagreement": "diversity_disagreement", "bma_accuracy": "bma_accuracy", "bma_nll": "bma_nll",
    "temperature": "temperature", "nll_cal": "nll_mean_cal", "ece_cal": "ece_mean_cal", "brier_cal": "brier_mean_cal",
    "diversity_js_cal": "diversity_js_cal", "bma_nll_cal": "bma_nll_cal",
}


def _row(summary: Mapping) -> dict:
    row = {**_identity(summary), "source": summary["source"], "networks": int(summary["num_networks"]),
           "guidance": float(summary.get("guidance", 0.0)), "bma_n": int(summary["bma_n"])}
    row.update({column: summary.get(key, math.nan) for column, key in METRIC_COLUMNS.items()})
    return row


def _order(row: Mapping) -> tuple:
    """Blocks in :data:`TABLE_BLOCKS` order; flows by geometry registry, unaligned first, alignment, coupling,
    variant (none first), then samples (flow, guided, control); baselines in registry order."""
    block = TABLE_BLOCKS.index(row["block"])
    if row["block"] == "baselines":
        labels = [b.label for b in BASELINES.values()]
        return block, labels.index(row["flow"]) if row["flow"] in labels else len(labels)
    kinds = [k.label for k in SAMPLE_KINDS.values()]
    return (block, GEOMETRY_NAMES.index(row["flow"]), row["alignment"] != "none", row["alignment"], row["coupling"],
            row["variant"] != "", row["variant"], kinds.index(row["samples"]))


def samples_table(summaries: Iterable[Mapping]) -> pd.DataFrame:
    """One row per source in the order of the module docstring."""
    return pd.DataFrame(sorted((_row(s) for s in summaries), key=_order)).reset_index(drop=True)


def samplers_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """One row per (flow id ``flow``, sampler ``candidate``) with its scores; flows in samples-table order, each
    flow's candidates in the given (config) order."""
    table = []
    for position, row in enumerate(rows):
        spec = FlowSpec.parse(row["flow"])
        table.append({"geometry": spec.geometry, "alignment": spec.alignment, "coupling": spec.coupling,
                      "variant": spec.variant or "", **row, "_position": position})
    key = lambda r: (GEOMETRY_NAMES.index(r["geometry"]), r["alignment"] != "none", r["alignment"],  # noqa: E731
                     r["coupling"], r["variant"] != "", r["variant"], r["_position"])
    return pd.DataFrame(sorted(table, key=key)).drop(columns="_position").reset_index(drop=True)


def _pm(mean: float, std: float, digits: int) -> str:
    return "--" if math.isnan(mean) else f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}"


def _num(value: float, digits: int) -> str:
    return "--" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def _tex(text: pd.Series) -> pd.Series:
    return text.fillna("").astype(str).str.replace("_", r"\_")


def _write(table: pd.DataFrame, shown: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str,
           label: str, text_columns: int) -> None:
    """``table`` as CSV (all columns, full precision); its formatted version ``shown`` as a LaTeX ``table`` whose
    first ``text_columns`` columns are left-aligned."""
    table.to_csv(csv_path, index=False, float_format="%.6g")
    column_format = "l" * text_columns + "r" * (shown.shape[1] - text_columns)
    Path(tex_path).write_text(shown.to_latex(index=False, caption=caption, label=label, column_format=column_format,
                                             escape=False, position="t"))


def write_table(table: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str, label: str) -> None:
    """Write the samples table as CSV (all columns, full precision) and as a LaTeX ``table`` (± columns)."""
    bma_n = sorted(set(table["bma_n"]))
    bma = f"n={bma_n[0]}" if len(bma_n) == 1 else "n=max"
    samples = [s if g <= 0 else f"{s} ($\\lambda$={g:g})" for s, g in zip(table["samples"], table["guidance"])]
    shown = pd.DataFrame({
        "Flow": _tex(table["flow"]),
        "Align.": _tex(table["alignment"]),
        "Coupl.": _tex(table["coupling"]),
        "Field": _tex(table["field"]),
        "Last layer": _tex(table["last_layer"]),
        "Samples": samples,
        "Accuracy": [_pm(m, s, 4) for m, s in zip(table["accuracy"], table["accuracy_std"])],
        "NLL": [_num(v, 3) for v in table["nll"]],
        "ECE": [_num(v, 3) for v in table["ece"]],
        "JS div.": [_num(v, 4) for v in table["diversity_js"]],
        f"BMA acc. ({bma})": [_num(v, 4) for v in table["bma_accuracy"]],
        f"BMA NLL ({bma})": [_num(v, 3) for v in table["bma_nll"]],
        "$T$": [_num(v, 2) for v in table["temperature"]],
        "NLL ($T$)": [_num(v, 3) for v in table["nll_cal"]],
        "ECE ($T$)": [_num(v, 3) for v in table["ece_cal"]],
        "JS ($T$)": [_num(v, 4) for v in table["diversity_js_cal"]],
        "BMA NLL ($T$)": [_num(v, 3) for v in table["bma_nll_cal"]],
    })
    _write(table, shown, csv_path, tex_path, caption=caption, label=label, text_columns=6)


def write_samplers_table(table: pd.DataFrame, csv_path: str | Path, tex_path: str | Path, *, caption: str,
                         label: str) -> None:
    """Write the samplers table as CSV (full precision) and as a LaTeX ``table`` (± columns)."""
    shown = pd.DataFrame({
        "Flow": _tex(table["geometry"]),
        "Align.": _tex(table["alignment"]),
        "Coupl.": _tex(table["coupling"]),
        "Variant": _tex(table["variant"]),
        "Sampler": _tex(table["candidate"]),
        "Selected": _tex(table["selected"]),
        "Val. acc.": [_num(v, 4) for v in table["val_accuracy"]],
        "Val. NLL": [_num(v, 3) for v in table["val_nll"]],
        "Accuracy": [_pm(m, s, 4) for m, s in zip(table["accuracy"], table["accuracy_std"])],
        "NLL": [_pm(m, s, 3) for m, s in zip(table["nll"], table["nll_std"])],
        "Collapsed": [_num(v, 3) for v in table["collapsed"]],
        "Disagr.": [_num(v, 3) for v in table["disagreement"]],
    })
    _write(table, shown, csv_path, tex_path, caption=caption, label=label, text_columns=6)
