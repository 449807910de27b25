"""Scoring: per-layer, per-domain calibration statistics from one forward pass per batch.

`LayerScores` is importable without torch; `score` (which needs torch) loads on first use.
"""

from __future__ import annotations

from typing import Any

from prunec.scoring.scores import DomainStats, LayerScores

__all__ = ["DomainStats", "LayerScores", "score"]


def __getattr__(name: str) -> Any:
    if name == "score":
        from prunec.scoring.engine import score

        return score
    raise AttributeError(f"module 'prunec.scoring' has no attribute {name!r}")
