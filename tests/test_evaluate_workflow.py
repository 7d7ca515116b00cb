"""The evaluation rules on the smoke config: every table and figure is built, and `snakemake --report` embeds them."""

import pandas as pd
import pytest
import yaml

from snakemake_runner import REPO, run_snakemake

from weightflow.names import BASELINES

pytestmark = pytest.mark.slow

FIGURES = ("bma", "calibration", "diversity")


def test_smoke_tables_figures_and_report(smoke_workdir):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    for name, exp in config["experiments"].items():
        if exp["dataset"] == "gaussian" or not exp.get("evaluation", {}).get("enabled", True):
            continue
        results = smoke_workdir / "results" / name
        table = pd.read_csv(results / "tables" / "samples.csv", keep_default_na=False)
        flows = exp.get("flows", [])
        guided = exp.get("evaluation", {}).get("guided_flows", flows)
        expected = {*flows, "ensemble", "deep_ensemble", *(f"{f}+{k}" for f in guided for k in ("guided", "control"))}
        expected |= {"ensemble_canonical"} if any(not f.startswith("euclidean") for f in flows) else set()
        expected |= {"ensemble_sphere"} if any(f.endswith("-sphere") for f in flows) else set()
        expected |= {b for b, base in BASELINES.items() if base.present and b not in ("ensemble", "deep_ensemble")
                     and base.present({"evaluation": {**exp.get("evaluation", {})}})}
        assert set(table["source"]) == expected
        assert "Target" in set(table["flow"]) and table["accuracy"].between(0, 1).all()
        assert (results / "tables" / "samples.tex").read_text().count("\\\\") == len(table) + 1  # header + rows
        # the canonical copy of the target in the function-preserving form scores exactly like the target
        target = table.set_index("source").loc[["ensemble", "ensemble_canonical"]]
        assert target["bma_nll"].iloc[0] == pytest.approx(target["bma_nll"].iloc[1], abs=1e-4)
        # each guided row has its control, at the same lambda (selected on the validation split)
        pairs = table[table["block"] == "guided"]
        assert list(pairs["samples"]) == ["guided", "guidance only"] * len(guided)
        assert pairs["guidance"].iloc[0] == pairs["guidance"].iloc[1] > 0
        selection = pd.read_csv(results / "tables" / "selection.csv", keep_default_na=False)
        assert set(selection["selected"]) == {"", "main", "guided", "control"}
        if exp.get("evaluation", {}).get("reference_posterior"):  # every posterior source against HMC
            fidelity = pd.read_csv(results / "tables" / "fidelity.csv", keep_default_na=False).set_index("source")
            assert fidelity.loc["hmc", "agreement"] == 1 and fidelity.loc["hmc", "tv"] == 0
            assert {"hmc_split", "ensemble", "laplace", "vi", *flows} <= set(fidelity.index)
            assert fidelity["tv"].between(0, 1).all()
            # every source has a measured cost; the split floor re-reads the HMC draws and costs nothing
            assert (fidelity.drop(index="hmc_split")["cpu_seconds"] > 0).all()
            assert set(fidelity["trained_on"]) >= {"ensemble", "HMC draws"}
            assert (results / "figures" / "fidelity.png").stat().st_size > 5000
        figures = FIGURES + (("steps",) if flows and exp.get("evaluation", {}).get("steps_flows", flows) else ())
        for figure in figures:
            for suffix in ("pdf", "png"):
                assert (results / "figures" / f"{figure}.{suffix}").stat().st_size > 5000, (figure, suffix)
    run_snakemake(smoke_workdir, "--report", "results/report.html")
    html = (smoke_workdir / "results" / "report.html").read_text()
    for name in (*FIGURES, "samples", "selection", "fidelity"):
        assert name in html
    assert "Bayesian model averaging on" in html  # a caption, rendered
