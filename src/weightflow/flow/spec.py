"""Flow ids ``{geometry}-{alignment}-{coupling}[-{variant}]``, the geometry registry, and each flow's data file.

* ``geometry``: a key of :data:`GEOMETRIES` — ``euclidean`` (raw weights, flat path and Gaussian prior),
  ``normalized`` (canonical weights, flat path, prior on the product of spheres) or ``geometric`` (canonical
  weights, geodesic path on the product of spheres);
* ``alignment``: ``none`` or the name of an alignment reference (:data:`weightflow.names.REFERENCES`, e.g. ``ref0``);
* ``coupling``: a key of :data:`COUPLING_NAMES` — ``independent`` or ``ot`` (minibatch optimal transport);
* ``variant`` (optional): the name of an entry of the experiment's ``variants`` config section, whose
  ``model`` / ``flow`` / ``canonical`` settings override the experiment's for this flow (e.g. ``ngt``: the same
  flow with the graph transformer as vector field; ``sphere``: the thesis' canonical form).

This module is torch-free: the workflow's rules parse flow ids in every Snakemake job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from weightflow import results

__all__ = ["FlowGeometry", "GEOMETRIES", "GEOMETRY_NAMES", "COUPLING_NAMES", "FLOW_ID_PATTERN", "FlowSpec"]


@dataclass(frozen=True)
class FlowGeometry:
    """What a flow geometry means: which geometry kind (:data:`weightflow.manifold.GEOMETRY_CLASSES`) carries
    the path and which one the prior p0, and which weights it models (``raw`` or ``canonical``)."""

    path: str
    prior: str
    representation: str
    description: str


# The registry of flow geometries, in table order.
GEOMETRIES: dict[str, FlowGeometry] = {
    "euclidean": FlowGeometry("euclidean", "euclidean", "raw",
                              "raw weights; straight path; Gaussian prior N(0, prior_std^2)"),
    "normalized": FlowGeometry("euclidean", "spheres", "canonical",
                               "canonical weights; straight path; prior uniform on the spheres x Gaussian"),
    "geometric": FlowGeometry("spheres", "spheres", "canonical",
                              "canonical weights; geodesic path on the product of spheres (Riemannian FM)"),
}
GEOMETRY_NAMES = tuple(GEOMETRIES)
# The names of weightflow.flow.couplings.COUPLINGS (a test checks they agree).
COUPLING_NAMES = ("independent", "ot")
_NAME = r"[A-Za-z0-9_]+"
FLOW_ID_PATTERN = rf"(?:{'|'.join(GEOMETRY_NAMES)})-{_NAME}-(?:{'|'.join(COUPLING_NAMES)})(?:-{_NAME})?"


@dataclass(frozen=True)
class FlowSpec:
    """The parts of a flow id."""

    geometry: str
    alignment: str
    coupling: str
    variant: str | None = None

    @classmethod
    def parse(cls, flow_id: str) -> "FlowSpec":
        """``'geometric-ref0-ot'`` → ``FlowSpec('geometric', 'ref0', 'ot')``; ``'geometric-ref0-ot-ngt'`` adds the
        variant ``'ngt'``.  Errors name the id."""
        if not re.fullmatch(FLOW_ID_PATTERN, flow_id):
            raise ValueError(
                f"flow id {flow_id!r} is not {{geometry}}-{{alignment}}-{{coupling}}[-{{variant}}] with geometry in "
                f"{GEOMETRY_NAMES}, alignment 'none' or a reference name, coupling in {COUPLING_NAMES} and an "
                "optional variant named in the experiment's `variants`"
            )
        parts = flow_id.split("-")
        return cls(*parts[:3], parts[3] if len(parts) == 4 else None)

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.geometry, self.alignment, self.coupling, self.variant) if p)

    @property
    def base_id(self) -> str:
        """The id without the variant (``{geometry}-{alignment}-{coupling}``)."""
        return f"{self.geometry}-{self.alignment}-{self.coupling}"

    @property
    def kind(self) -> FlowGeometry:
        return GEOMETRIES[self.geometry]

    @property
    def representation(self) -> str:
        """``'raw'`` (raw weights) or ``'canonical'`` (canonical weights); flows of one representation (and one
        canonical form) model the same kind of networks and can score each other's samples."""
        return self.kind.representation

    def data_path(self, experiment: str, last_layer: str) -> str:
        """The weights file (relative to the workflow root) this flow trains on.

        Raw flows read the ensemble (``alignment == 'none'``) or its alignment onto a reference; canonical flows
        read the canonical weights of that alignment in the canonical form ``last_layer`` (``free`` or ``sphere``;
        the flow's effective ``canonical.last_layer``).
        """
        if self.representation == "canonical":
            return results.canonical_weights(experiment, last_layer, self.alignment)
        return results.aligned_or_raw_weights(experiment, self.alignment)
