"""The training-curves table and figure (weightflow.plots.training) on small hand-made logs."""

import math

import pandas as pd

from weightflow.plots.training import plot_training, training_table


def _log(steps, acc, seconds_per_step):
    return pd.DataFrame({"step": steps, "val_loss": [0.1 / s for s in steps], "sample_acc": acc,
                         "seconds": [s * seconds_per_step for s in steps]})


def test_training_table_states_each_budget_and_its_best_step():
    logs = {"euclidean-ref0-ot": _log([100, 200, 300], [0.5, 0.8, 0.7], 0.25),
            "geometric-ref0-ot-ngt": _log([50, 100], [0.1, 0.2], 1.0)}
    budgets = {"euclidean-ref0-ot": {"model": "mlp", "width": 256, "batch_size": 128},
               "geometric-ref0-ot-ngt": {"model": "ngt", "width": 32, "batch_size": 16}}
    table = training_table(logs, budgets).set_index("flow")
    mlp, ngt = table.loc["euclidean-ref0-ot"], table.loc["geometric-ref0-ot-ngt"]
    assert (mlp.steps, mlp.networks_seen, mlp.best_step) == (300, 300 * 128, 200)
    assert math.isclose(mlp.seconds_per_step, 0.25) and math.isclose(mlp.final_sample_acc, 0.7)
    assert math.isclose(mlp.best_sample_acc, 0.8) and math.isclose(mlp.final_val_loss, 0.1 / 300)
    assert (ngt.geometry, ngt.model, ngt.networks_seen) == ("geometric", "ngt", 100 * 16)
    assert math.isclose(ngt.seconds_per_step, 1.0)

    fig = plot_training(logs, budgets, title="t")
    for ax in fig.axes[:3]:
        assert len(ax.lines) == 2  # one line per flow in each panel
    styles = {line.get_linestyle() for line in fig.axes[0].lines}
    assert len(styles) == 2  # the two vector fields are told apart


def test_flows_without_accuracy_have_no_best_step():
    logs = {"euclidean-none-independent": _log([10, 20], [float("nan"), float("nan")], 0.1)}
    table = training_table(logs, {"euclidean-none-independent": {"model": "mlp", "width": 8, "batch_size": 4}})
    assert table["best_step"].iloc[0] == -1 and math.isnan(table["best_sample_acc"].iloc[0])
