"""Flow samples as initializations (the thesis' Figure 4.6): train networks on task B from flow samples and from the
prior, and compare how fast they learn.

For every seed ``s < seeds`` and every start — ``prior`` (a draw of the initialization prior N(0, init_std²) on
weights, zero biases, as the Adam networks of task B started), ``flow`` (network ``s`` of a flow's own samples),
``guided`` (network ``s`` of its samples guided by B's training loss) — one network is trained on B's training
split by Adam for ``steps`` minibatch steps; all of them run as one vectorized computation (one parameter row per
network, :func:`weightflow.weights.cross_entropy` summed over rows, so each row gets its own gradient).  Seed ``s``
uses one minibatch order for every start: the starts are compared on the same data stream.  Test accuracy and loss
are recorded at ``eval_every`` steps (and step 0).

:func:`steps_to_reach` is the summary the issue asks for: the first recorded step at which a start's test accuracy
reaches 90 % of the prior start's final accuracy (mean over seeds), per seed, then mean ± std over seeds.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.data import Dataset, load_experiment_data
from weightflow.evaluate.transfer import task_config
from weightflow.flow.samples import load_samples
from weightflow.runner import StageJob
from weightflow.utils import generator, progress
from weightflow.weights import MLPLayout, as_layout, cross_entropy, forward, init_weights

__all__ = ["train_from", "steps_to_reach", "initialization_stage"]

log = logging.getLogger(__name__)


def _test_scores(theta: Tensor, layout: MLPLayout, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        lp = forward(theta, layout, x).log_softmax(-1)
        acc = (lp.argmax(-1) == y).double().mean(-1)
        loss = -lp.gather(-1, y.expand(len(theta), -1).unsqueeze(-1)).squeeze(-1).double().mean(-1)
    return acc, loss


def train_from(
    theta0: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    data: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    eval_every: int,
    orders: Sequence[torch.Generator],
) -> pd.DataFrame:
    """Train every row of ``theta0 [R, D]`` on ``data``'s training split with Adam (one vectorized run); row ``r``
    draws its minibatches from ``orders[r]``.  Returns rows ``network, step, test_accuracy, test_loss``."""
    layout = as_layout(layer_sizes)
    theta = theta0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    n, rows = len(data.y_train), []
    bs = min(batch_size, n)
    queues: list[Tensor] = [torch.zeros(0, dtype=torch.long) for _ in orders]

    def record(step: int) -> None:
        acc, loss = _test_scores(theta, layout, data.x_test, data.y_test)
        rows.extend({"network": r, "step": step, "test_accuracy": a, "test_loss": l}
                    for r, (a, l) in enumerate(zip(acc.tolist(), loss.tolist())))

    record(0)
    for step in progress(range(1, steps + 1), desc="training from flow samples"):
        for r, gen in enumerate(orders):  # each network's own epoch-wise permutation of the training set
            if len(queues[r]) < bs:
                queues[r] = torch.cat([queues[r], torch.randperm(n, generator=gen)])
        idx = torch.stack([q[:bs] for q in queues])
        queues = [q[bs:] for q in queues]
        loss = cross_entropy(theta, layout, data.x_train[idx], data.y_train[idx]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            record(step)
    return pd.DataFrame(rows)


def steps_to_reach(curves: pd.DataFrame, fraction: float = 0.9) -> pd.DataFrame:
    """Per start: the first recorded step at which the test accuracy reaches ``fraction`` × the prior start's final
    accuracy (mean over seeds), mean ± std over seeds (NaN for a seed that never reaches it within the budget)."""
    last = curves["step"].max()
    target = fraction * curves[(curves["start"] == "prior") & (curves["step"] == last)]["test_accuracy"].mean()
    out = []
    for (start, _), part in curves.groupby(["start", "flow"], sort=False):
        reached = []
        for _, seed in part.groupby("seed"):
            hit = seed[seed["test_accuracy"] >= target]["step"]
            reached.append(float(hit.min()) if len(hit) else math.nan)
        values = pd.Series(reached)
        final = part[part["step"] == last]["test_accuracy"]
        out.append({"start": start, "flow": part["flow"].iloc[0], "target_accuracy": target,
                    "steps_mean": values.mean(), "steps_std": values.std(ddof=0), "seeds_reached": int(values.notna().sum()),
                    "seeds": len(values), "final_accuracy_mean": final.mean(), "final_accuracy_std": final.std(ddof=0)})
    return pd.DataFrame(out)


def initialization_stage(job: StageJob) -> None:
    """``transfer/initialization.csv`` (curves) and ``tables/initialization.csv`` (steps to 90 % of the prior
    start's final accuracy): the starts of the module docstring for every flow of
    ``transfer.initialization.flows``, trained on task B."""
    cfg = job.params["cfg"]
    init = cfg["transfer"]["initialization"]
    task = task_config(cfg)
    data = load_experiment_data(task)
    sizes, seeds = cfg["layer_sizes"], int(init["seeds"])
    starts, labels = [], []
    prior = init_weights(sizes, seeds, init_std=cfg["ensemble"]["init_std"], bias_std=cfg["ensemble"]["bias_init_std"],
                         generator=generator(cfg["seed"], "initialization", "prior"))
    starts.append(prior)
    labels += [("prior", "", s) for s in range(seeds)]
    for flow, candidates, selection in zip(init["flows"], job.inputs["candidates"], job.inputs["selections"]):
        for kind, start in (("main", "flow"), ("guided", "guided")):
            wf = load_samples(candidates, selection, kind, layer_sizes=sizes)
            if len(wf) < seeds:
                raise ValueError(f"transfer.initialization.seeds = {seeds} but flow {flow} has {len(wf)} samples "
                                 "(transfer.sampling.num_samples)")
            starts.append(wf.weights[:seeds])
            labels += [(start, flow, s) for s in range(seeds)]
    orders = [generator(cfg["seed"], "initialization", "order", seed) for _, _, seed in labels]
    curves = train_from(torch.cat(starts), sizes, data, steps=init["steps"], lr=init["lr"],
                        batch_size=init["batch_size"], eval_every=init["eval_every"], orders=orders)
    meta = pd.DataFrame(labels, columns=["start", "flow", "seed"]).rename_axis("network").reset_index()
    curves = meta.merge(curves, on="network").drop(columns="network")
    curves.to_csv(job.output_path("curves"), index=False, float_format="%.6g")
    summary = steps_to_reach(curves)
    summary.to_csv(job.output_path("csv"), index=False, float_format="%.6g")
    log.info("training on %s from flow samples vs from the prior:\n%s", task["name"], summary.to_string(index=False))
