"""SLEB-style iterative ablation: repeatedly drop the layer whose removal hurts calibration
loss least. Opt-in (strategy `iterative`): it costs about budget x layers forward passes over
a small calibration subset, versus one pass for the similarity scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from prunec import distributed
from prunec.data import Record, encode
from prunec.plan.model import Plan

if TYPE_CHECKING:
    from collections.abc import Callable

    from prunec.arch.loading import LoadedModel
    from prunec.distributed import Group

#: Samples per domain used for the ablation loss (the order is stable well before this).
ABLATION_SAMPLES = 8


def calibration_loss(
    loaded: LoadedModel, batches: list[tuple[float, dict[str, torch.Tensor]]]
) -> float:
    """Weighted mean next-token NLL over non-padding tokens of the given batches."""
    from prunec.scoring.engine import model_inputs

    total = 0.0
    with torch.inference_mode():
        for weight, inputs in batches:
            out = loaded.model(**model_inputs(loaded.model, inputs), use_cache=False)
            logits = out.logits[:, :-1].float()
            target = inputs["input_ids"][:, 1:].to(logits.device)
            mask = inputs["attention_mask"][:, 1:].to(logits.device).float()
            nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            total += weight * float((nll * mask).sum() / mask.sum().clamp(min=1))
    return total


def ablation_order(
    plan: Plan, loaded: LoadedModel, records: dict[str, list[Record]]
) -> tuple[int, ...]:
    """Layers in the order greedy ablation removes them, as many as the plan's budget.

    Greedy removal is prefix-consistent: the first k layers of this order are what the same
    procedure would remove for any budget k. Forbidden layers (keep/protect) are never tried.
    """
    from prunec.arch import skip_layers
    from prunec.plan.constraints import Constraints

    constraints = Constraints.from_plan(plan, loaded.num_layers)
    weights = plan.normalized_weights()
    batches = [
        (
            weights[d.name],
            encode(loaded.processor, records[d.name][:ABLATION_SAMPLES], d.max_length),
        )
        for d in plan.domains
        if records[d.name]
    ]
    candidates = [i for i in range(loaded.num_layers) if i not in constraints.forbidden]
    removed: list[int] = []
    shard = distributed.group()
    for _ in range(min(constraints.budget, len(candidates))):
        trials = [layer for layer in candidates if layer not in removed]

        def loss(layer: int, removed: list[int] = removed) -> float:
            with skip_layers(loaded.model, sorted([*removed, layer])):
                return calibration_loss(loaded, batches)

        if shard is None:
            losses = [loss(layer) for layer in trials]
        else:  # each process tries its share of the layers; each loss comes from one process
            losses = list(
                shard.run_and_sum("the ablation order", len(trials), _share(shard, trials, loss))
            )
        best = min(range(len(trials)), key=lambda i: (losses[i], trials[i]))
        removed.append(trials[best])
    return tuple(removed)


def _share(
    shard: Group, trials: list[int], loss: Callable[[int], float]
) -> Callable[[], list[float]]:
    """This process's losses at its trials' positions, zero elsewhere (summed over processes)."""

    def run() -> list[float]:
        return [loss(layer) if shard.owns(i) else 0.0 for i, layer in enumerate(trials)]

    return run
