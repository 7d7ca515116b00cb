"""Evaluating sets of networks: BMA sanity on trained ensembles, temperature-calibrated metrics, the stages, tables
and figures."""

import json

import pandas as pd
import pytest
import torch

from weightflow.data import load_dataset
from weightflow.ensemble import EnsembleConfig, train_ensemble
from weightflow.evaluate import metrics
from weightflow.evaluate.networks import EvaluationSettings, evaluate_networks, log_probs_of
from weightflow.evaluate.stages import evaluate_stage, samplers_stage, table_stage
from weightflow.evaluate.tables import samples_table
from weightflow.io import WeightsFile, save_weights
from weightflow.plots.evaluation import bma_stage, calibration_stage, diversity_stage
from weightflow.runner import StageJob
from weightflow.weights import unflatten

SETTINGS = EvaluationSettings(bma_sizes=(1, 2, 4, 8, 64), bma_subsets=10, diversity_networks=16)


def quick_ensemble(name, layer_sizes, runs=8, epochs=6, snapshot_every=5):
    data = load_dataset(name, seed=0)
    cfg = EnsembleConfig(runs=runs, epochs=epochs, batch_size=32, lr=3e-3, burn_in_epochs=epochs - 2,
                         snapshot_every=snapshot_every)
    return data, train_ensemble(data, layer_sizes, cfg, seed=0).snapshots


@pytest.mark.parametrize("name,layer_sizes", [("breast_cancer", [30, 16, 16, 2]), ("digits", [64, 16, 10])])
def test_bma_of_an_ensemble_beats_its_mean_member(name, layer_sizes):
    data, snaps = quick_ensemble(name, layer_sizes)
    final = snaps.weights[snaps.columns["final"] == 1]  # 8 independent runs
    result = evaluate_networks(final, layer_sizes, data.x_test, data.y_test, SETTINGS,
                               generator=torch.Generator().manual_seed(0))
    s = result.summary
    assert s["bma_n"] == 8  # 64 > 8 runs: the BMA of all of them
    assert s["bma_accuracy"] >= s["accuracy_mean"]
    # Jensen: the NLL of the averaged probabilities never exceeds the members' mean NLL.
    assert s["bma_nll"] <= s["nll_mean"] + 1e-6
    assert s["bma_brier"] <= s["brier_mean"] + 1e-6
    assert result.bma["n"].tolist() == [1, 2, 4, 8]
    assert 0.0 < s["diversity_js"] < 0.6931472 and 0.0 <= s["diversity_disagreement"] <= 1.0
    assert len(result.networks) == 8 and result.networks["accuracy"].between(0, 1).all()


def test_calibrated_metrics_do_not_depend_on_the_logit_scale():
    """Multiplying every network's logits by c (last layer × c) multiplies the fitted temperature by c and leaves
    every calibrated metric unchanged; the raw NLL changes.  The fit uses the validation split."""
    data, snaps = quick_ensemble("iris", [4, 6, 3], runs=4, epochs=4)
    nets = snaps.weights[snaps.columns["final"] == 1]
    scaled = nets.clone()
    w_last, b_last = unflatten(scaled, [4, 6, 3])[-1]
    w_last.mul_(0.3), b_last.mul_(0.3)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    val = (data.x_val, data.y_val)
    a = evaluate_networks(nets, [4, 6, 3], data.x_test, data.y_test, SETTINGS, generator=gen(), val=val)
    b = evaluate_networks(scaled, [4, 6, 3], data.x_test, data.y_test, SETTINGS, generator=gen(), val=val)
    assert a.networks["accuracy"].tolist() == b.networks["accuracy"].tolist()
    assert b.summary["temperature"] == pytest.approx(0.3 * a.summary["temperature"], rel=1e-3)
    for key in ("nll_mean_cal", "ece_mean_cal", "brier_mean_cal", "bma_nll_cal", "diversity_js_cal"):
        assert b.summary[key] == pytest.approx(a.summary[key], rel=2e-3, abs=1e-6), key
    assert not b.summary["nll_mean"] == pytest.approx(a.summary["nll_mean"], rel=1e-2)  # raw NLL depends on it
    # T minimizes the mean validation NLL: neighbouring temperatures do worse
    from weightflow.evaluate.networks import logits_of
    logits = logits_of(nets, [4, 6, 3], data.x_val)
    val_nll = lambda t: metrics.nll(torch.log_softmax(logits / t, -1), data.y_val).mean().item()  # noqa: E731
    t = a.summary["temperature"]
    assert val_nll(t) <= min(val_nll(0.9 * t), val_nll(1.1 * t))


def test_function_preserving_canonical_copy_has_the_same_scores(tmp_path):
    """The ensemble through the canonical stage in the free form scores exactly like the ensemble (same subsets,
    BMA NLL within float error); in the thesis' (sphere) form the raw NLL differs but the calibrated one is close."""
    from weightflow.canonical import canonicalize

    data, snaps = quick_ensemble("iris", [4, 6, 3], runs=6, epochs=6, snapshot_every=2)
    cfg = {"name": "toy", "dataset": "iris", "seed": 0, "layer_sizes": [4, 6, 3], "device": "cpu",
           "val_fraction": 0.2, "test_fraction": 0.2,
           "evaluation": {"split": "test", "max_networks": 25, "ece_bins": 15, "bma_sizes": [1, 4, 16],
                          "bma_subsets": 5, "diversity_networks": 8, "ood": None, "ood_samples": 10}}
    summaries = {}
    for source, form in (("ensemble", None), ("ensemble_canonical", "free"), ("ensemble_sphere", "sphere")):
        weights = snaps.weights if form is None else canonicalize(snaps.weights, [4, 6, 3], last_layer=form)[0]
        path = tmp_path / f"{source}.pt"
        meta = {} if form is None else {"canonical": {"last_layer": form}}
        save_weights(path, WeightsFile(weights, (4, 6, 3), columns=snaps.columns, metadata=meta))
        out = {k: tmp_path / source / f for k, f in (("networks", "networks.csv"), ("bma", "bma.csv"),
               ("reliability", "reliability.csv"), ("summary", "summary.json"))}
        evaluate_stage(StageJob(inputs={"weights": str(path)}, outputs=out, params={"cfg": cfg},
                                wildcards={"source": source}))
        summaries[source] = json.loads(out["summary"].read_text())
    target, free, sphere = summaries["ensemble"], summaries["ensemble_canonical"], summaries["ensemble_sphere"]
    assert free["last_layer"] == "free" and sphere["last_layer"] == "sphere" and target["last_layer"] == "raw"
    for key in ("accuracy_mean", "nll_mean", "bma_nll", "bma_accuracy", "diversity_js", "temperature"):
        assert free[key] == pytest.approx(target[key], rel=1e-5, abs=1e-6), key
    assert sphere["accuracy_mean"] == pytest.approx(target["accuracy_mean"])
    assert abs(sphere["nll_mean"] - target["nll_mean"]) > 1e-3


def test_stages_write_summaries_table_and_figures(tmp_path):
    data, snaps = quick_ensemble("iris", [4, 6, 3], runs=5, epochs=6, snapshot_every=1)  # 6 snapshots per run
    snaps.metadata = {"dataset": "iris", "seed": 0}
    save_weights(tmp_path / "weights.pt", snaps)
    cfg = {"name": "toy_run", "dataset": "iris", "seed": 0, "layer_sizes": [4, 6, 3], "device": "cpu",
           "val_fraction": 0.2, "test_fraction": 0.2,
           "evaluation": {"split": "test", "max_networks": 20, "ece_bins": 15, "bma_sizes": [1, 4, 64],
                          "bma_subsets": 5, "diversity_networks": 8, "ood": "gaussian_noise", "ood_samples": 50}}
    out = {}
    for source in ("ensemble", "deep_ensemble"):
        out[source] = {k: tmp_path / source / f for k, f in (("networks", "networks.csv"), ("bma", "bma.csv"),
                       ("reliability", "reliability.csv"), ("summary", "summary.json"))}
        evaluate_stage(StageJob(inputs={"weights": str(tmp_path / "weights.pt")}, outputs=out[source],
                                params={"cfg": cfg}, wildcards={"source": source}))
        assert pd.read_csv(out[source]["bma"])["source"].eq(source).all()
    summaries = {s: json.loads(out[s]["summary"].read_text()) for s in out}
    assert summaries["ensemble"]["num_networks"] == 20 and summaries["deep_ensemble"]["num_networks"] == 5
    assert 0.0 <= summaries["ensemble"]["bma_ood_auroc"] <= 1.0
    networks = pd.read_csv(out["deep_ensemble"]["networks"])
    assert (networks["final"] == 1).all() and {"run", "step", "ood_auroc"} <= set(networks.columns)
    rel = pd.read_csv(out["ensemble"]["reliability"])
    assert rel.groupby("kind")["count"].sum().to_dict() == {"single": 20 * 30, "bma": 30}  # 30 test inputs

    job = StageJob(inputs={"summaries": [str(out[s]["summary"]) for s in out]},
                   outputs={"csv": tmp_path / "samples.csv", "tex": tmp_path / "samples.tex"}, params={"cfg": cfg})
    table_stage(job)
    table = pd.read_csv(tmp_path / "samples.csv")
    assert table["flow"].tolist() == ["Target", "Deep ensemble"]
    assert table.loc[1, "accuracy"] == pytest.approx(summaries["deep_ensemble"]["accuracy_mean"])
    tex = (tmp_path / "samples.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "toy run" in tex

    for stage, inputs in ((bma_stage, {"bma": [str(out[s]["bma"]) for s in out]}),
                          (calibration_stage, {"reliability": [str(out[s]["reliability"]) for s in out],
                                               "summaries": [str(out[s]["summary"]) for s in out]}),
                          (diversity_stage, {"summaries": [str(out[s]["summary"]) for s in out]})):
        files = {"pdf": tmp_path / f"{stage.__name__}.pdf", "png": tmp_path / f"{stage.__name__}.png"}
        stage(StageJob(inputs=inputs, outputs=files, params={"cfg": cfg}))
        assert all(f.stat().st_size > 5000 for f in files.values())


def test_samples_table_orders_flows_then_baselines_then_guided_pairs():
    base = {"num_networks": 4, "accuracy_mean": 0.9, "accuracy_std": 0.01, "nll_mean": 0.3, "nll_std": 0.1,
            "ece_mean": 0.05, "diversity_js": 0.01, "diversity_disagreement": 0.02, "bma_n": 4, "bma_accuracy": 0.92,
            "bma_nll": 0.25, "temperature": 1.0}
    sources = ["ensemble", "geometric-ref0-ot+control", "geometric-ref0-ot", "geometric-ref0-ot-ngt",
               "euclidean-none-independent", "geometric-ref0-ot+guided", "euclidean-ref0-ot", "deep_ensemble",
               "ensemble_canonical"]
    table = samples_table([dict(base, source=s) for s in sources])
    assert table["source"].tolist() == [
        "euclidean-none-independent", "euclidean-ref0-ot", "geometric-ref0-ot", "geometric-ref0-ot-ngt",
        "ensemble", "ensemble_canonical", "deep_ensemble", "geometric-ref0-ot+guided", "geometric-ref0-ot+control"]
    assert table["samples"].tolist()[-2:] == ["guided", "guidance only"]
    assert table["flow"].tolist()[4:7] == ["Target", "Target (canonical)", "Deep ensemble"]
    assert table["variant"].tolist()[2:4] == ["", "ngt"]


def _candidates_file(tmp_path, flow, samples: dict, selected: dict):
    """A candidates.pt / selection.csv pair as select_stage writes them (val scores made up)."""
    from weightflow.flow.samples import save_candidates

    cands = [{"name": n, "sampler": n, "options": {}, "guidance": 0.0, "control": False} for n in samples]
    path, selection = tmp_path / f"{flow}.pt", tmp_path / f"{flow}.csv"
    save_candidates(path, samples, cands, (4, 6, 3), {"flow": flow, "model": "mlp"})
    pd.DataFrame({"flow": flow, "candidate": list(samples), "sampler": list(samples), "guidance": 0.0,
                  "control": False, "val_accuracy": 0.5, "val_nll": 1.0, "val_collapsed": 0.0, "criterion": "nll",
                  "selected": [selected.get(n, "") for n in samples]}).to_csv(selection, index=False)
    return str(path), str(selection)


def test_samplers_table_counts_collapsed_networks(tmp_path):
    """Two sampler candidates of one flow: trained networks, and the same with one in four replaced by a dead
    network (hidden layer switched off, output bias for class 0): the dead ones are counted and lower the accuracy."""
    data, snaps = quick_ensemble("iris", [4, 6, 3], runs=8, epochs=6)
    nets = snaps.weights[snaps.columns["final"] == 1]
    dead = nets.clone()
    for w, b in unflatten(dead[::4], [4, 6, 3]):
        w.zero_(), b.zero_()
    unflatten(dead, [4, 6, 3])[-1][1][::4, 0] = 1.0  # dead[::4] is a view: predict class 0 everywhere
    cfg = {"name": "toy", "dataset": "iris", "seed": 0, "layer_sizes": [4, 6, 3], "device": "cpu",
           "evaluation": {"split": "test", "diversity_networks": 8}}
    candidates, selection = _candidates_file(tmp_path, "geometric-ref0-ot", {"euler": nets, "broken": dead},
                                             {"euler": "main"})
    samplers_stage(StageJob(inputs={"candidates": [candidates], "selections": [selection]}, params={"cfg": cfg},
                            outputs={"csv": tmp_path / "samplers.csv", "tex": tmp_path / "samplers.tex"}))
    table = pd.read_csv(tmp_path / "samplers.csv", keep_default_na=False).set_index("candidate")
    assert table.loc["euler", "collapsed"] == 0.0 and table.loc["broken", "collapsed"] == 0.25
    per_network = metrics.accuracy(log_probs_of(nets, [4, 6, 3], data.x_test), data.y_test)
    per_network[::4] = (data.y_test == 0).float().mean()  # a dead network is right on the class-0 inputs only
    assert table.loc["broken", "accuracy"] == pytest.approx(per_network.mean().item(), abs=1e-6)
    assert table.loc["broken", "accuracy"] < table.loc["euler", "accuracy"]
    assert (table["geometry"] == "geometric").all() and (table["networks"] == 8).all()
    assert table.loc["euler", "selected"] == "main" and table.loc["broken", "selected"] == ""
    assert "broken" in (tmp_path / "samplers.tex").read_text()


def test_log_probs_of_matches_per_network_forward():
    data, snaps = quick_ensemble("iris", [4, 6, 3], runs=3, epochs=3)
    lp = log_probs_of(snaps.weights[:5], [4, 6, 3], data.x_test)
    for i in range(5):
        single = log_probs_of(snaps.weights[i:i + 1], [4, 6, 3], data.x_test)[0]
        assert torch.allclose(lp[i], single, atol=1e-6)
    assert torch.allclose(metrics.bma_log_probs(lp).exp().sum(-1), torch.ones(len(data.y_test)), atol=1e-6)


def test_config_check_names_the_field():
    from weightflow.config import ConfigError
    from weightflow.config import check_evaluation_config

    def exp(optimizer="adam", seed=0, flows=(), steps_flows=None, sgld=None, main=None, guided_flows=None):
        return {"dataset": "iris", "seed": seed, "layer_sizes": [4, 6, 3], "val_fraction": 0.2, "max_examples": None,
                "test_fraction": 0.2, "flows": list(flows), "ensemble": {"optimizer": optimizer},
                "sampling": {"main": main, "samplers": {"euler": {"steps": 10}, "guided": {"guidance": 1.0}}},
                "evaluation": {"sgld": sgld, "steps_flows": steps_flows, "guided_flows": guided_flows}}

    check_evaluation_config({"experiments": {"a": exp(sgld="b"), "b": exp(optimizer="sgld")}})
    with pytest.raises(ConfigError, match=r"experiments\.a\.evaluation\.sgld: experiment 'b' has seed"):
        check_evaluation_config({"experiments": {"a": exp(sgld="b"), "b": exp(optimizer="sgld", seed=1)}})
    with pytest.raises(ConfigError, match=r"experiments\.a\.evaluation\.sgld: no experiment named 'c'"):
        check_evaluation_config({"experiments": {"a": exp(sgld="c")}})
    with pytest.raises(ConfigError, match=r"experiments\.a\.evaluation\.steps_flows"):
        check_evaluation_config({"experiments": {"a": exp(flows=["euclidean-none-ot"], steps_flows=["x"])}})
    with pytest.raises(ConfigError, match=r"experiments\.a\.evaluation\.guided_flows"):
        check_evaluation_config({"experiments": {"a": exp(flows=["euclidean-none-ot"], guided_flows=["x"])}})
    with pytest.raises(ConfigError, match=r"experiments\.a\.sampling\.main: 'guided' is not an unguided sampler"):
        check_evaluation_config({"experiments": {"a": exp(main="guided")}})
