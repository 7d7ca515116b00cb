"""Figures: one module per figure family (``weightflow.plots.<family>``), all styled by ``weightflow.plots.style``."""
