"""The evaluation rules on the smoke config: every table and figure is built, and `snakemake --report` embeds them."""

import pandas as pd
import pytest
import yaml

from snakemake_runner import REPO, run_snakemake

pytestmark = pytest.mark.slow

FIGURES = ("bma", "calibration", "diversity")


def test_smoke_tables_figures_and_report(smoke_workdir):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    for name, exp in config["experiments"].items():
        if exp["dataset"] == "gaussian":
            continue
        results = smoke_workdir / "results" / name
        table = pd.read_csv(results / "tables" / "samples.csv")
        flows = exp.get("flows", [])
        assert len(table) == 2 + len(flows) + bool(exp.get("evaluation", {}).get("sgld"))
        assert "Target" in set(table["flow"]) and table["accuracy"].between(0, 1).all()
        assert (results / "tables" / "samples.tex").read_text().count("\\\\") == len(table) + 1  # header + rows
        figures = FIGURES + (("steps",) if flows and exp.get("evaluation", {}).get("steps_flows", flows) else ())
        for figure in figures:
            for suffix in ("pdf", "png"):
                assert (results / "figures" / f"{figure}.{suffix}").stat().st_size > 5000, (figure, suffix)
    run_snakemake(smoke_workdir, "--report", "results/report.html")
    html = (smoke_workdir / "results" / "report.html").read_text()
    for name in (*FIGURES, "samples"):
        assert name in html
    assert "Bayesian model averaging on" in html  # a caption, rendered
