"""Table and figure of the x1-prediction runs of ``x1_prediction.py`` (JSON files in a folder).

    python benchmarks/flow_quality/x1_summary.py /tmp/fq/A --out benchmarks/flow_quality/x1_prediction

Writes ``{out}.csv`` (one row per run: flow, model, objective, times, weighting, prior, steps, sample std per
weight against the data's, validation accuracy, collapsed fraction) and ``{out}.png``: (a) the x1-predictor's
held-out error per time against predicting the data mean, (b) the sampler-velocity error per time, (c) the
samples' per-weight std relative to the data's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from weightflow.io import load_weights
from weightflow.plots.style import color_for, figure, save

REPO = Path(__file__).resolve().parents[2]


def gaussian_floor(t: float, prior_std: float = 0.31622777) -> float:
    """The least held-out x1-error per weight at time t if every weight were Gaussian with the aligned ensemble's
    std σ1 (independent coupling, prior std σ0): mean_i (1−t)²σ0²σ1_i² / ((1−t)²σ0² + t²σ1_i²)."""
    s1 = load_weights(REPO / "results/breast_cancer/aligned/ref0/weights.pt").weights.double().std(0)
    a = (1 - t) ** 2 * prior_std**2
    return float((a * s1**2 / (a + t**2 * s1**2)).mean())


def label(run: dict) -> str:
    f = run["flow_settings"]
    prior = f", prior {f['prior_std']:g}" if "prior_std" in f else ""
    return (f"{run['model']['name']} {f['objective']}/{f['time_distribution']}/{f.get('loss_weighting', 'none')}"
            f"{prior}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    p.add_argument("--figure", nargs="*", default=None, help="JSON stems to draw (default: all)")
    args = p.parse_args()
    runs = {path.stem: json.loads(path.read_text()) for path in sorted(Path(args.folder).glob("*.json"))}
    rows = []
    for stem, run in runs.items():
        f, s, d = run["flow_settings"], run["samples"], run["data"]
        rows.append({"run": stem, "flow": run["flow"], "model": run["model"]["name"],
                     "width": run["model"].get("width"), "depth": run["model"].get("depth"),
                     "objective": f["objective"], "time_distribution": f["time_distribution"],
                     "loss_weighting": f.get("loss_weighting", "none"), "prior_std": f.get("prior_std", ""),
                     "iterations": f["iterations"], "batch_size": f["batch_size"], "lr": f["lr"],
                     "sample_std": s["sample_std_mean"], "data_std": s["data_std_mean"],
                     "std_ratio_median": s["std_ratio_median"], "acc": s["acc_mean"], "data_acc": d["acc_mean"],
                     "collapsed": s["collapsed"], "train_seconds": run["train_seconds"]})
    table = pd.DataFrame(rows)
    table.to_csv(f"{args.out}.csv", index=False, float_format="%.4g")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    chosen = args.figure or list(runs)
    fig, axes = figure(3, 1, width=3.3, height=2.7)
    ax_x1, ax_v, ax_s = axes[0]
    for i, stem in enumerate(chosen):
        run = runs[stem]
        err = pd.DataFrame(run["error_by_time"])
        style = dict(color=color_for(i), marker="o", ms=3, lw=1.2, label=label(run))
        ax_x1.plot(1 - err["t"], err["x1_mse"], **style)
        ax_v.plot(1 - err["t"], err["vel_mse"], **style)
        ax_s.bar(i, run["samples"]["std_ratio_median"], color=color_for(i))
    err = pd.DataFrame(runs[chosen[0]]["error_by_time"])
    floor = torch.tensor([gaussian_floor(float(t)) for t in err["t"]]).numpy()
    ax_x1.plot(1 - err["t"], err["mean_mse"], color="0.4", ls="--", lw=0.8, label="predict the data mean")
    ax_x1.plot(1 - err["t"], floor, color="0.2", ls=":", lw=1.0, label="Gaussian floor")
    ax_v.plot(1 - err["t"], floor / (1 - err["t"]) ** 2, color="0.2", ls=":", lw=1.0, label="Gaussian floor")
    ax_v.plot(1 - err["t"], err["u_sq"], color="0.4", ls="--", lw=0.8, label="|u_t|² (target's own size)")
    print("Gaussian floor of the x1-error per t:", dict(zip(err["t"], floor.round(7))))
    for ax, title in ((ax_x1, "(a) held-out |x̂1 − x1|² per weight"), (ax_v, "(b) held-out |v̂ − u_t|² per weight")):
        ax.set(xscale="log", yscale="log", xlabel="1 − t", title=title)
        ax.invert_xaxis()
        ax.legend(frameon=False, fontsize=6)
    ax_s.axhline(1.0, color="0.4", ls="--", lw=0.8)
    ax_s.set_xticks(range(len(chosen)), [label(runs[s]) for s in chosen], rotation=35, ha="right", fontsize=6)
    ax_s.set(ylabel="sample std / data std (median over weights)", title="(c) spread of the samples")
    save(fig, [f"{args.out}.png"])


if __name__ == "__main__":
    main()
