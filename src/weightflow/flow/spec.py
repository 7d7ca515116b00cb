"""Flow ids ``{geometry}-{alignment}-{coupling}`` and the weights file each flow trains on.

* ``geometry``: ``euclidean`` (raw weights), ``normalized`` (canonical weights, Euclidean path) or
  ``geometric`` (canonical weights, geodesic path on the product of spheres);
* ``alignment``: ``none`` or the name of an alignment reference (e.g. ``ref0``);
* ``coupling``: ``independent`` or ``ot`` (minibatch optimal transport).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FlowSpec", "GEOMETRY_NAMES", "COUPLING_NAMES", "FLOW_ID_PATTERN"]

GEOMETRY_NAMES = ("euclidean", "normalized", "geometric")
COUPLING_NAMES = ("independent", "ot")
FLOW_ID_PATTERN = rf"({'|'.join(GEOMETRY_NAMES)})-[A-Za-z0-9_]+-({'|'.join(COUPLING_NAMES)})"


@dataclass(frozen=True)
class FlowSpec:
    """The three parts of a flow id."""

    geometry: str
    alignment: str
    coupling: str

    @classmethod
    def parse(cls, flow_id: str) -> "FlowSpec":
        """``'geometric-ref0-ot'`` → ``FlowSpec('geometric', 'ref0', 'ot')``; errors name the id."""
        if not re.fullmatch(FLOW_ID_PATTERN, flow_id):
            raise ValueError(
                f"flow id {flow_id!r} is not {{geometry}}-{{alignment}}-{{coupling}} with geometry in "
                f"{GEOMETRY_NAMES}, alignment 'none' or a reference name, coupling in {COUPLING_NAMES}"
            )
        geometry, rest = flow_id.split("-", 1)
        alignment, coupling = rest.rsplit("-", 1)
        return cls(geometry, alignment, coupling)

    @property
    def id(self) -> str:
        return f"{self.geometry}-{self.alignment}-{self.coupling}"

    @property
    def representation(self) -> str:
        """``'raw'`` (euclidean flows: raw weights) or ``'canonical'`` (normalized, geometric: canonical weights);
        flows of one representation model the same kind of networks and can score each other's samples."""
        return "raw" if self.geometry == "euclidean" else "canonical"

    def data_path(self, experiment: str) -> str:
        """The weights file (relative to the workflow root) this flow trains on.

        Euclidean flows read the raw ensemble (``alignment == 'none'``) or its alignment onto a reference;
        Normalized and Geometric flows read the canonical weights of that alignment (``none`` included).
        """
        if self.geometry != "euclidean":
            return f"results/{experiment}/canonical/{self.alignment}/weights.pt"
        if self.alignment == "none":
            return f"results/{experiment}/ensemble/weights.pt"
        return f"results/{experiment}/aligned/{self.alignment}/weights.pt"
