"""The MNIST-class DAG (config/smoke_fashion.yaml, the smoke-sized config/fashion_mnist.yaml) end to end: flows on
Fashion-MNIST 784-10-10 networks, guided transfer to digits28, flow samples as initializations, architecture
transfer to 784-16-10, vector-field scaling.  Skips when Debian's Fashion-MNIST files are absent."""

import os
from pathlib import Path

import pandas as pd
import pytest

from snakemake_runner import REPO, run_snakemake

from weightflow.data import DEFAULT_ROOTS

FASHION = Path(os.environ.get("WEIGHTFLOW_FASHION_MNIST_ROOT", DEFAULT_ROOTS["fashion_mnist"]))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not FASHION.is_dir(), reason=f"Fashion-MNIST IDX files not in {FASHION} (apt-get install dataset-fashion-mnist)")]


@pytest.fixture(scope="module")
def fashion_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fashion")
    run_snakemake(workdir, "--cores", "2", configfile=REPO / "config" / "smoke_fashion.yaml", timeout=1500)
    return workdir / "results" / "fashion_mnist"


def test_tables_and_figures_of_the_mnist_class_experiment(fashion_workdir):
    tables, figures = fashion_workdir / "tables", fashion_workdir / "figures"
    samples = pd.read_csv(tables / "samples.csv", keep_default_na=False)
    assert {"euclidean-ref0-ot", "geometric-ref0-ot", "geometric-ref0-ot-ngt"} <= set(samples["source"])
    assert set(samples[samples["block"] == "flow samples"]["field"]) == {"mlp", "ngt"}
    for name in ("samples", "bma", "steps", "calibration", "diversity", "initialization", "scaling"):
        path = figures / f"{name}.png" if name != "samples" else tables / "samples.tex"
        assert path.stat().st_size > 1000, name


def test_guided_transfer_rows(fashion_workdir):
    table = pd.read_csv(fashion_workdir / "tables" / "transfer.csv", keep_default_na=False)
    assert table["flow"].iloc[0] == "Adam on digits28" and table["relative_accuracy"].iloc[0] == 1.0
    for flow in ("geometric-ref0-ot", "geometric-ref0-ot-ngt"):
        rows = table[table["flow"] == flow].set_index("samples")
        assert list(rows.index) == ["flow", "guided", "guidance only"]
        assert rows.loc["guided", "guidance"] == rows.loc["guidance only", "guidance"] > 0
        assert rows.loc["guided", "steps"] == rows.loc["guidance only", "steps"]
    assert table["accuracy"].between(0, 1).all()


def test_architecture_transfer_scores_wider_networks_and_names_the_flat_mlp(fashion_workdir):
    table = pd.read_csv(fashion_workdir / "tables" / "architecture.csv", keep_default_na=False)
    ngt = table[table["flow"] == "geometric-ref0-ot-ngt"]
    assert list(ngt["architecture"]) == ["784-10-10", "784-16-10", "784-16-10", "784-16-10"]
    assert list(ngt["samples"]) == ["flow (own size)", "flow", "guided", "guidance only"]
    flat = table[table["flow"] == "geometric-ref0-ot"]
    assert len(flat) == 1 and "not possible" in flat["samples"].item()


def test_initialization_and_scaling_tables(fashion_workdir):
    init = pd.read_csv(fashion_workdir / "tables" / "initialization.csv", keep_default_na=False)
    assert list(init["start"]) == ["prior", "flow", "guided"] and (init["seeds"] == 2).all()
    curves = pd.read_csv(fashion_workdir / "transfer" / "initialization.csv", keep_default_na=False)
    assert sorted(set(curves["step"])) == [0, 3, 6]
    scaling = pd.read_csv(fashion_workdir / "tables" / "scaling.csv")
    assert sorted(scaling["width"]) == [4, 8] and scaling["parameters"].is_monotonic_increasing
