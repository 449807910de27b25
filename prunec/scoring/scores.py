"""`LayerScores`: per-domain, per-layer statistics from calibration, and their JSON form.

This module must not import torch: `prunec plan --scores FILE` plans from a file alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TokenScope = Literal["all", "last"]

#: Version of the JSON layout written by `LayerScores.to_json`.
SCORES_FORMAT = 1


@dataclass(frozen=True)
class DomainStats:
    """Statistics of one calibration domain; every tuple has one entry per decoder layer l.

    h_l is the hidden state entering layer l (h_L leaves the last layer).
    cos_all: mean over all non-padding tokens of cos(h_l, h_{l+1}).
    cos_last: the same over the last non-padding token of each sample; None when unknown
        (a scores file in the minimal form carries importances only).
    angular_all / angular_last: mean of arccos(cos(h_l, h_{l+1})) / pi, in [0, 1].
    pair_angular_last: [L+1][L+1] mean angular distance between h_i and h_j on the last token
        (symmetric, zero diagonal): what Gromov et al.'s block strategy needs for any block
        size, collected in the same single pass. None when unknown.
    tokens / samples: how many tokens / samples the means are over (0 when unknown).
    """

    cos_all: tuple[float, ...]
    cos_last: tuple[float, ...] | None = None
    angular_all: tuple[float, ...] | None = None
    angular_last: tuple[float, ...] | None = None
    pair_angular_last: tuple[tuple[float, ...], ...] | None = None
    tokens: int = 0
    samples: int = 0

    def cosine(self, tokens: TokenScope = "all") -> tuple[float, ...]:
        if tokens == "all":
            return self.cos_all
        if self.cos_last is None:
            raise ValueError("these scores carry no last-token statistics")
        return self.cos_last


@dataclass(frozen=True)
class LayerScores:
    """Calibration statistics for every decoder layer and domain.

    num_layers: decoder layers scored (L).
    domains: domain name -> DomainStats, in the spec's order.
    fingerprints: what the scores were computed from: "model", "data.<domain>", "settings",
        "code" (hex digests); empty for scores read from a minimal file.
    iterative_order: for the `iterative` strategy, layers in the order SLEB-style ablation
        removed them (first = least harmful); empty when not computed.
    """

    num_layers: int
    domains: Mapping[str, DomainStats]
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    iterative_order: tuple[int, ...] = ()

    def importance(self, domain: str, tokens: TokenScope = "all") -> tuple[float, ...]:
        """I_d(l) = 1 - mean cos(h_l, h_{l+1}) over the domain's tokens (the paper's score)."""
        return tuple(1.0 - c for c in self.domains[domain].cosine(tokens))

    def combined(
        self, weights: Mapping[str, float] | None = None, tokens: TokenScope = "all"
    ) -> tuple[float, ...]:
        """I(l) = sum_d w_d I_d(l), weights normalised to sum 1 (None = equal weights)."""
        chosen = dict(weights) if weights is not None else dict.fromkeys(self.domains, 1.0)
        total = sum(chosen.values())
        if total <= 0:
            raise ValueError("domain weights must sum to a positive number")
        out = [0.0] * self.num_layers
        for name, weight in chosen.items():
            for layer, value in enumerate(self.importance(name, tokens)):
                out[layer] += weight / total * value
        return tuple(out)

    def pooled(self, tokens: TokenScope = "all") -> tuple[float, ...]:
        """ShortGPT Block Influence: 1 - cos averaged over all calibration tokens pooled.

        Domains weigh by their token (or sample) counts, not by the spec's weights. Scores
        without counts (minimal files) pool with equal weights.
        """
        counts = {
            name: (s.tokens if tokens == "all" else s.samples) for name, s in self.domains.items()
        }
        if sum(counts.values()) <= 0:
            counts = dict.fromkeys(self.domains, 1)
        return self.combined({k: float(v) for k, v in counts.items() if v > 0}, tokens)

    def pair_angular(self) -> tuple[tuple[float, ...], ...]:
        """Pooled (by samples) last-token angular distance between h_i and h_j."""
        matrices = [s.pair_angular_last for s in self.domains.values()]
        weights = [max(s.samples, 1) for s in self.domains.values()]
        if any(m is None for m in matrices):
            raise ValueError("these scores carry no pairwise angular distances")
        size = self.num_layers + 1
        total = float(sum(weights))
        out = [[0.0] * size for _ in range(size)]
        for weight, matrix in zip(weights, matrices, strict=True):
            assert matrix is not None
            for i in range(size):
                for j in range(size):
                    out[i][j] += weight * matrix[i][j] / total
        return tuple(tuple(row) for row in out)

    # -- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_json(to_json())` round-trips exactly."""
        return {
            "format": SCORES_FORMAT,
            "num_layers": self.num_layers,
            "fingerprints": dict(sorted(self.fingerprints.items())),
            "iterative_order": list(self.iterative_order),
            "domains": {
                name: {
                    "importance": list(self.importance(name)),
                    "cos_all": list(s.cos_all),
                    "cos_last": _maybe_list(s.cos_last),
                    "angular_all": _maybe_list(s.angular_all),
                    "angular_last": _maybe_list(s.angular_last),
                    "pair_angular_last": (
                        [list(row) for row in s.pair_angular_last]
                        if s.pair_angular_last is not None
                        else None
                    ),
                    "tokens": s.tokens,
                    "samples": s.samples,
                }
                for name, s in self.domains.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerScores:
        """Read `to_json` output, or the minimal form `{"domains": {"math": [I per layer]}}`.

        Raises ValueError with a message naming the offending key on malformed input.
        """
        domains_raw = data.get("domains") if isinstance(data, Mapping) else None
        if not isinstance(domains_raw, Mapping) or not domains_raw:
            raise ValueError('expected an object with a non-empty "domains" object')
        domains: dict[str, DomainStats] = {}
        for name, raw in domains_raw.items():
            domains[str(name)] = _domain_from_json(str(name), raw)
        sizes = {len(s.cos_all) for s in domains.values()}
        if len(sizes) != 1:
            raise ValueError(f"domains have different layer counts: {sorted(sizes)}")
        num_layers = sizes.pop()
        if num_layers == 0:
            raise ValueError("scores have no layers")
        declared = data.get("num_layers", num_layers)
        if declared != num_layers:
            raise ValueError(f"num_layers is {declared} but the domains have {num_layers}")
        return cls(
            num_layers=num_layers,
            domains=domains,
            fingerprints={str(k): str(v) for k, v in dict(data.get("fingerprints", {})).items()},
            iterative_order=tuple(int(i) for i in data.get("iterative_order", ())),
        )

    @classmethod
    def from_importance(cls, importance: Mapping[str, Sequence[float]]) -> LayerScores:
        """Scores from per-domain importance lists alone (the minimal file form)."""
        return cls.from_json({"domains": {k: list(v) for k, v in importance.items()}})


def _maybe_list(values: tuple[float, ...] | None) -> list[float] | None:
    return list(values) if values is not None else None


def _floats(name: str, key: str, raw: Any) -> tuple[float, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ValueError(f"domains.{name}.{key}: expected a list of numbers")
    out: list[float] = []
    for i, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"domains.{name}.{key}[{i}]: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"domains.{name}.{key}[{i}]: {value} is not finite")
        out.append(float(value))
    return tuple(out)


def _domain_from_json(name: str, raw: Any) -> DomainStats:
    if not isinstance(raw, Mapping):  # minimal form: the list is the importance
        return DomainStats(cos_all=tuple(1.0 - v for v in _floats(name, "importance", raw)))

    def opt(key: str) -> tuple[float, ...] | None:
        return _floats(name, key, raw[key]) if raw.get(key) is not None else None

    if raw.get("cos_all") is not None:
        cos_all = _floats(name, "cos_all", raw["cos_all"])
    elif raw.get("importance") is not None:
        cos_all = tuple(1.0 - v for v in _floats(name, "importance", raw["importance"]))
    else:
        raise ValueError(f'domains.{name}: expected "importance" or "cos_all"')
    pairs = raw.get("pair_angular_last")
    return DomainStats(
        cos_all=cos_all,
        cos_last=opt("cos_last"),
        angular_all=opt("angular_all"),
        angular_last=opt("angular_last"),
        pair_angular_last=(
            tuple(_floats(name, "pair_angular_last", row) for row in pairs)
            if pairs is not None
            else None
        ),
        tokens=int(raw.get("tokens", 0)),
        samples=int(raw.get("samples", 0)),
    )
