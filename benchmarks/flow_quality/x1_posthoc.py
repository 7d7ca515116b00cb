"""Post-hoc checks of flows saved by ``x1_prediction.py`` (``*.model.pt``): sample spread against the number of
Euler steps, and the spread along the data-mean direction (the direction the Gaussian sanity check tests).

    python benchmarks/flow_quality/x1_posthoc.py /tmp/fq/A/mlp_vel_unif.model.pt ... --steps 100 400

Per flow and step count: median over weights of sample std / data std, validation accuracy, and
``mean_dir_ratio`` = std of the samples' projection on the (unit) data-mean direction over the data's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import x1_prediction  # noqa: E402  (registers the scratch model names)

from weightflow.data import load_dataset  # noqa: E402
from weightflow.flow import load_flow, sample  # noqa: E402
from weightflow.flow.spec import FlowSpec  # noqa: E402
from weightflow.weights import forward  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 400])
    p.add_argument("--samples", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(1)
    task = load_dataset("breast_cancer", seed=0)
    for path in args.models:
        flow = load_flow(path)
        spec = FlowSpec.parse(flow.config["flow_id"])
        data = x1_prediction.load_data(spec, flow.config["path_params"].get("last_layer", "free")).weights
        keep = ~torch.isin(x1_prediction.load_data(spec, "free").columns["run"],
                           torch.tensor(flow.holdout_runs, dtype=torch.long))
        data = data[keep]
        direction = data.mean(0) / data.mean(0).norm()
        data_std, data_proj = data.std(0), float((data @ direction).std())
        for steps in args.steps:
            nets = sample(flow, args.samples, steps=steps, generator=torch.Generator().manual_seed(11))
            acc = (forward(nets, x1_prediction.LAYER_SIZES, task.x_val).argmax(-1) == task.y_val).float().mean(1)
            print(f"{Path(path).name:36s} steps {steps:4d}: std ratio {float((nets.std(0) / data_std).median()):.3f}, "
                  f"mean-direction ratio {float((nets @ direction).std()) / data_proj:.3f}, acc {float(acc.mean()):.4f}")


if __name__ == "__main__":
    main()
