"""The Snakemake workflow: DAG, lint, config validation, and byte-identical reruns on the smoke config."""

import pytest
import yaml
from snakemake_runner import REPO, run_snakemake

from weightflow.dataset_registry import missing_data

pytestmark = pytest.mark.slow


def test_default_dag_lists_every_experiment(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", configfile=REPO / "config" / "config.yaml")
    assert "train_ensemble" in proc.stdout


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml"))
def test_every_shipped_config_validates_and_plans_its_flows(tmp_path, config):
    """Each configuration in config/ passes the schema and the cross-field checks and plans a DAG that trains flows
    (a broken config file would otherwise surface only when somebody runs it)."""
    experiments = yaml.safe_load((REPO / "config" / config).read_text())["experiments"]
    with_flows = {name: exp for name, exp in experiments.items() if exp.get("flows")}
    absent = {name: why for name, exp in with_flows.items() if (why := missing_data(exp["dataset"], exp.get("data_root")))}
    if with_flows and len(absent) == len(with_flows):
        pytest.skip(f"{config}: every experiment with flows lacks its data here: {absent}")
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", configfile=REPO / "config" / config)
    assert "train_flow" in proc.stdout, proc.stderr[-2000:]


def test_a_transfer_whose_task_lacks_its_data_leaves_only_the_transfer_targets_out(tmp_path, monkeypatch):
    """config/digits28.yaml without Fashion-MNIST's files: task B (fashion_adam) is left out, and with it the
    transfer table and the initialization figure of digits28_flows; its flows and evaluation stay in the DAG."""
    monkeypatch.setenv("WEIGHTFLOW_FASHION_MNIST_ROOT", str(tmp_path / "nowhere"))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfile=REPO / "config" / "digits28.yaml")
    out = proc.stdout + proc.stderr
    assert "experiment 'fashion_adam' left out of the DAG" in proc.stderr
    assert "transfer.task 'fashion_adam' is left out" in proc.stderr
    assert "results/digits28_flows/flows/euclidean-ref0-ot/model.pt" in out
    assert "results/digits28_flows/tables/transfer.csv" not in out
    assert "results/digits28_flows/figures/initialization.pdf" not in out


def test_an_experiment_without_its_dataset_files_is_left_out_with_the_remedy(tmp_path):
    """config/thesis.yaml's mnist experiment where MNIST's IDX files are absent: the DAG leaves it out and says why;
    with the four files in its data_root it is in the DAG."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["experiments"] = {name: exp for name, exp in config["experiments"].items() if exp["dataset"] != "gaussian"}
    config["experiments"]["mnist"] = {"dataset": "mnist", "data_root": str(tmp_path / "nowhere"),
                                      "layer_sizes": [784, 10, 10], "seed": 0,
                                      "ensemble": {"runs": 2, "epochs": 2, "burn_in_epochs": 1}}
    path = tmp_path / "mnist.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", configfile=path)
    assert "experiment 'mnist' left out of the DAG" in proc.stderr and "nowhere" in proc.stderr
    assert "data_root" in proc.stderr and "digits28" in proc.stderr
    root = tmp_path / "idx"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte"):
        (root / stem).write_bytes(b"")
    config["experiments"]["mnist"]["data_root"] = str(root)
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfile=path)
    assert "left out" not in proc.stderr and "results/mnist/ensemble/weights.pt" in proc.stdout + proc.stderr


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("patch,field,message", [
    ({"ensemble": {"epochs": -3}}, "['ensemble']['epochs']", "less than the minimum"),
    ({"ensemble": {"runs": "many"}}, "['ensemble']['runs']", "is not of type 'integer'"),
    ({"dataset": "cifar10"}, "['dataset']", "is not one of"),
    ({"layer_sizes": [5, 6, 3]}, "experiments.smoke.layer_sizes", "does not fit dataset 'iris'"),
    ({"ensemble": {"burn_in_epochs": 9}}, "experiments.smoke.ensemble.burn_in_epochs", "smaller than epochs"),
])
def test_bad_config_stops_before_any_job(tmp_path, patch, field, message):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    exp = config["experiments"]["smoke"]
    for key, value in patch.items():
        if isinstance(value, dict):
            exp[key].update(value)
        else:
            exp[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "--cores", "1", configfile=path, check=False)
    assert proc.returncode != 0
    assert field in proc.stderr and message in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "results").exists()


def test_smoke_dag_runs_and_reruns_byte_identically(smoke_workdir, tmp_path):
    target = "results/smoke/ensemble/weights.pt"
    first = (smoke_workdir / target).read_bytes()
    assert (smoke_workdir / "results/smoke/figures/ensemble_training.pdf").stat().st_size > 1000
    run_snakemake(tmp_path, "--cores", "1", target)
    assert (tmp_path / target).read_bytes() == first
    # nothing left to do on a second invocation in the same directory
    proc = run_snakemake(smoke_workdir, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr
