"""``truth``: the true label distributions as posteriors (simulation only): the perfect-posterior bound.

The oracle knows which labels are wrong and picks them; ``truth`` gives a priority rule the posteriors a
perfect model would give, and lets the rule rank as it would (default: the paper's ``alc``). The gap
between ``truth`` and a learned selector is what better posteriors could still win; the gap between
``truth`` and ``oracle`` is what no posterior model can win with that rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scoring.selectors.baselines import OracleSelector


class TruthSelector(OracleSelector):
    """(N, C) posteriors = the true label distributions; the ``alc`` rule by default; never re-picks a task."""

    default_rule = "alc"
    allow_reselect = False

    def update(self, data: Any, label_counts: np.ndarray) -> "TruthSelector":
        """The truth does not change with new labels."""
        return self
