"""A trained flow: :class:`FlowModel` and its file ``model.pt`` (:func:`save_flow`, :func:`load_flow`).

``model.pt`` is a plain dict read with ``torch.load(weights_only=True)``::

    {
      "format": "weightflow-flow", "format_version": 1,
      "config": str,                 # JSON: flow id parts, layer_sizes, model and flow config, path params, ...
      "state_dict": {name: Tensor},  # EMA weights of the vector-field network
      "holdout_runs": Tensor [H] int64,  # ensemble runs held out of training (for likelihood evaluation)
    }

From a notebook::

    from weightflow.flow import load_flow, sample
    flow = load_flow("results/breast_cancer/flows/geometric-ref0-ot/model.pt")
    nets = sample(flow, 64, steps=100)          # [64, D] flat-layout networks
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightflow.flow.objectives import OBJECTIVES
from weightflow.flow.paths import FlowPath, build_path
from weightflow.flow.spec import FlowSpec
from weightflow.io import read_payload
from weightflow.models import build_model
from weightflow.weights import MLPLayout

__all__ = ["FlowModel", "FlowFileError", "build_network", "save_flow", "load_flow"]

FORMAT = "weightflow-flow"
FORMAT_VERSION = 1


class FlowFileError(ValueError):
    """A flow model file is missing or malformed (the message names the file and field)."""


def build_network(config: dict[str, Any], *, training: bool = True) -> nn.Module:
    """The vector-field network of ``config['model']`` (``name`` plus options) for ``layer_sizes``, its
    initial parameters drawn from ``config['model_seed']``.  ``training=False`` (a trained flow loaded for sampling
    and likelihoods) leaves out ``compile``: compiling pays off over many training steps, and vmapped
    vector-Jacobian products (exact divergences) do not run through compiled backward graphs."""
    options = dict(config["model"])
    name = options.pop("name")
    if not training:
        options.pop("compile", None)
    return build_model(name, list(config["layer_sizes"]), seed=config["model_seed"], **options)


class FlowModel:
    """A trained flow: geometry, prior, vector-field network (EMA weights, eval mode) and its config.

    Attributes:
        geometry: the path geometry (``Euclidean`` for euclidean/normalized flows, ``ProductSpheres`` for
            geometric flows): exp/log/tangent projections used by the sampler and likelihoods.
        prior: the geometry whose ``sample_prior`` / ``prior_log_prob`` define p0 (``ProductSpheres`` for the
            normalized flow — its prior lives on the manifold while its path is Euclidean — else ``geometry``).
        layout: the base networks' :class:`MLPLayout`.
        model: the network ``model(x [B, D], t [B]) -> [B, D]``.
        config: dict (see :func:`save_flow`).
        holdout_runs: ensemble run ids kept out of training.
    """

    def __init__(self, path: FlowPath, model: nn.Module, config: dict[str, Any], holdout_runs: list[int]):
        self.path = path
        self.geometry = path.geometry
        self.prior = path.prior
        self.layout = MLPLayout(tuple(config["layer_sizes"]))
        self.model = model
        self.config = config
        self.holdout_runs = [int(r) for r in holdout_runs]
        self.objective = OBJECTIVES[config["flow"]["objective"]]

    @property
    def device(self) -> torch.device:
        tensor = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "FlowModel":
        self.model.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """What a table needs to say about this flow: id parts, vector field, canonical form, objective."""
        spec = FlowSpec.parse(self.config["flow_id"])
        canonical = spec.representation == "canonical"
        return {"flow": spec.id, "base_flow": spec.base_id, "geometry": spec.geometry, "alignment": spec.alignment,
                "coupling": spec.coupling, "variant": spec.variant or "", "model": self.config["model"]["name"],
                "last_layer": self.config["path_params"].get("last_layer", "sphere") if canonical else "raw",
                "objective": self.config["flow"]["objective"],
                "time_distribution": self.config["flow"]["time_distribution"],
                "model_width": self.config["model"].get("width"),
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The sampler's velocity ``[B, D]`` at ``x [B, D]``, ``t [B]`` (tangent to the manifold on spheres)."""
        return self.objective.velocity(self.geometry, self.model(x, t).float(), x, t)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, D]`` draws from p0 on the model's device."""
        return self.path.sample_prior(n, generator=generator).to(self.device)


def save_flow(path: str | Path, model: nn.Module, config: dict[str, Any], holdout_runs: list[int]) -> None:
    """Write ``model.pt``: the (EMA) network's state dict, the JSON config and the held-out runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "holdout_runs": torch.tensor([int(r) for r in holdout_runs], dtype=torch.long),
    }
    torch.save(payload, path)


def load_flow(path: str | Path, device: str | torch.device = "cpu") -> FlowModel:
    """Read ``model.pt`` safely (``weights_only=True``) into a :class:`FlowModel` in eval mode on ``device``."""
    path = Path(path)
    payload = read_payload(path, FORMAT, FORMAT_VERSION, ("config", "state_dict", "holdout_runs"), FlowFileError,
                           "flow model file")
    config = json.loads(payload["config"])
    model = build_network(config, training=False)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise FlowFileError(f"{path}: field 'state_dict' does not fit model {config['model']}: {exc}") from exc
    model.eval().requires_grad_(False).to(device)
    layout = MLPLayout(tuple(config["layer_sizes"]))
    flow_path = build_path(config["geometry"], layout, config["path_params"], config["flow"]["sigma"])
    return FlowModel(flow_path, model, config, payload["holdout_runs"].tolist())
