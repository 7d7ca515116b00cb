"""A flow's sample candidates and its selected sample sets: ``samples/candidates.pt`` and ``selection.csv``.

``candidates.pt`` is one weights file (:mod:`weightflow.io`) holding the networks of every sampler candidate of
one flow (:mod:`weightflow.evaluate.selection`), stacked: column ``candidate`` (index into the metadata's
``candidates`` list) and column ``sample`` (index of the network within its candidate; the same index means the
same prior draw for every candidate).  ``selection.csv`` has one row per candidate with its validation scores and
a ``selected`` column naming the sample set it was chosen for (``main``, ``guided``, ``control``; empty otherwise).

:func:`load_samples` returns one selected set — e.g. the flow's own samples (``main``) for the tables,
figures and likelihoods — as a weights file whose metadata says which candidate it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from torch import Tensor

from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.names import SAMPLE_KINDS

__all__ = ["save_candidates", "load_candidates", "load_samples"]


def save_candidates(path: str | Path, samples: Mapping[str, Tensor], candidates: list[dict[str, Any]],
                    layer_sizes, metadata: dict[str, Any]) -> None:
    """Write ``samples`` (``{candidate name: [num, D]}``, in the order of ``candidates``) as one weights file."""
    names = [c["name"] for c in candidates]
    if list(samples) != names:
        raise ValueError(f"samples {list(samples)} do not match the candidates {names}")
    weights = torch.cat([samples[n].detach().cpu() for n in names])
    counts = [samples[n].shape[0] for n in names]
    columns = {"candidate": torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts)),
               "sample": torch.cat([torch.arange(c) for c in counts])}
    save_weights(path, WeightsFile(weights, tuple(layer_sizes), columns=columns,
                                   metadata={**metadata, "kind": "flow_sample_candidates", "candidates": candidates}))


def load_candidates(path: str | Path, layer_sizes=None) -> dict[str, WeightsFile]:
    """``{candidate name: weights file of its networks}`` (metadata: the file's plus ``candidate``)."""
    wf = load_weights(path, layer_sizes=layer_sizes)
    candidates = wf.metadata.get("candidates")
    if not candidates or "candidate" not in wf.columns:
        raise WeightsFileError(f"{path}: not a candidates file of the select_sampler stage (no 'candidates' metadata)")
    out = {}
    for index, cand in enumerate(candidates):
        part = wf.select(wf.columns["candidate"] == index)
        part.metadata = {k: v for k, v in wf.metadata.items() if k not in ("candidates", "kind")}
        part.metadata.update(candidate=cand["name"], sampler=cand["sampler"], guidance=cand["guidance"],
                             control=cand["control"], sampler_options=cand["options"])
        out[cand["name"]] = part
    return out


def load_samples(candidates_path: str | Path, selection_path: str | Path, kind: str, layer_sizes=None) -> WeightsFile:
    """The networks of the candidate ``selection.csv`` selected for sample set ``kind`` (``main``, ``guided``,
    ``control``); metadata adds ``samples = kind``."""
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample set {kind!r}; use one of {sorted(SAMPLE_KINDS)}")
    selection = pd.read_csv(selection_path, keep_default_na=False)
    chosen = selection.loc[selection["selected"] == kind, "candidate"]
    if chosen.empty:
        raise WeightsFileError(f"{selection_path}: no candidate is selected for {kind!r} (column 'selected')")
    candidates = load_candidates(candidates_path, layer_sizes)
    name = str(chosen.iloc[0])
    if name not in candidates:
        raise WeightsFileError(f"{selection_path}: selected candidate {name!r} is not in {candidates_path}")
    wf = candidates[name]
    wf.metadata["samples"] = kind
    return wf
