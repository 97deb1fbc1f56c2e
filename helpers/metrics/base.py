"""What every metric module shares: the tidy row layout and the positive part that map scores read."""

from __future__ import annotations

import numpy as np

#: Columns of every tidy score table: one row per image x pathology x method x metric.
COLUMNS = ["image", "pathology", "method", "metric", "value"]


def positive_part(heatmap: np.ndarray) -> np.ndarray:
    """The evidence for the pathology, float64: ``max(map, 0)``."""
    return np.maximum(np.asarray(heatmap, dtype=np.float64), 0.0)
