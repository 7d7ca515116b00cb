"""weightflow: geometric flow models over neural network weights.

Layers (each imports only those before it): ``data`` -> ``weights``/``io`` -> ``ensemble``, ``align``,
``canonical`` + ``manifold`` -> ``graph`` + ``models`` -> ``flow`` -> ``likelihood`` -> ``evaluate`` + ``plots``.
The Snakemake workflow (``workflow/``) imports this package; this package never imports Snakemake.
"""

__version__ = "0.1.0"
