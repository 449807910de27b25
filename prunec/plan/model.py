"""The validated build plan: what a `.prune` file means, independent of how it was written.

Every stage after the front end consumes a `Plan`. All paths are absolute (resolved against
the spec file's directory). Layer indices are 0-based everywhere in prunec: layer 0 is the
decoder layer nearest the embeddings.

Plans are frozen. Two plans parsed from texts that differ only in formatting or comments
compare equal through `plan.model_dump()` (spans are excluded from dumps and from the schema).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from prunec.errors import Span

Dtype = Literal["auto", "float32", "float16", "bfloat16"]

#: `auto`'s default compute budget: at most this many candidate evaluations on the search part
#: of the calibration data (docs/language.md gives what that costs).
DEFAULT_SEARCH = 48

#: Which tokens the layer statistics average over.
TokenScope = Literal["all", "last"]

#: Training-free healing methods (`heal` in `prune`), in the order the docs list them.
HEAL_METHODS: tuple[str, ...] = ("none", "linear")
HealMethod = Literal["none", "linear"]
#: `heal linear`'s default ridge strength, relative to the mean squared size of what the
#: corrected layer's MLP writes (docs/language.md, "Healing").
DEFAULT_RIDGE = 1e-3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """The model to prune.

    source: an HF hub id ("org/name") or an absolute local directory.
    local: True when `source` is a local directory (written relative to the spec).
    revision: hub revision (branch, tag or commit); None = the hub default.
    dtype: weights dtype for loading; "auto" keeps the checkpoint's.
    device: "cpu", "cuda", "cuda:N", "mps", or "auto" (accelerate device_map).
    trust_remote_code: only True when the spec opts in explicitly.
    """

    source: str
    local: bool = False
    revision: str | None = None
    dtype: Dtype = "auto"
    device: str = "cpu"
    trust_remote_code: bool = False


#: `hf://datasets/ORG/NAME[@REVISION]`: the path syntax of huggingface_hub's HfFileSystem,
#: which `datasets` and pandas also read. No local path starts with `hf://`.
HUB_DATASET_PREFIX = "hf://datasets/"
_HUB_DATASET = re.compile(
    r"^hf://datasets/(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?)"
    r"(@(?P<revision>[A-Za-z0-9._/-]+))?$"
)


class HubDataset(_Frozen):
    """A dataset on the Hugging Face hub, written `"hf://datasets/ORG/NAME[@REVISION]"`.

    repo: the dataset id ("org/name", or "name" for the few datasets without an owner).
    revision: branch, tag or commit after `@`; None = the hub default.
    """

    repo: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubDataset | None:
        """The hub dataset `text` names, or None when it is not `hf://datasets/...`."""
        match = _HUB_DATASET.match(text)
        return cls(repo=match["repo"], revision=match["revision"]) if match else None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://datasets/{self.repo}{rev}"


#: Where data comes from: a local file or folder (absolute path), or a hub dataset.
DataSource = Path | HubDataset


class FieldNames(_Frozen):
    """Which field (JSON key, table column) holds each part of a record (`fields` in a domain).

    A part the spec does not map is None and keeps its documented name (`name()`).
    """

    text: str | None = None
    image: str | None = None
    answer: str | None = None

    def name(self, part: Literal["text", "image", "answer"]) -> str:
        """The field holding `part`: the mapped name, else the documented one."""
        mapped: str | None = getattr(self, part)
        return mapped if mapped is not None else part


class DomainSpec(_Frozen):
    """One calibration domain.

    data: calibration data: a JSONL/JSON/Parquet/CSV file or a folder of them (absolute
        path), or a hub dataset.
    samples: how many records to use (None = all).
    weight: the domain's share in the combined importance; > 0. Normalised across domains
        by `Plan.normalized_weights()`.
    max_length: token limit per calibration sample (longer samples are truncated).
    eval: optional evaluation data used by `verify` gates when a gate names no file.
    seed: sampling seed for choosing `samples` records.
    fields: the field names of flat records; None = the documented names, and files in the
        LLaVA `conversations` or chat `messages` layout are recognised.
    split / eval_split: the split read from folders and hub datasets for `data` / for `eval`
        and gates (None = "train", the split a folder of plain files has).
    config: the dataset configuration of folders and hub datasets (None = the default one).
    """

    name: str
    data: DataSource
    samples: int | None = None
    weight: float = 1.0
    max_length: int = 512
    eval: DataSource | None = None
    seed: int = 0
    fields: FieldNames | None = None
    split: str | None = None
    eval_split: str | None = None
    config: str | None = None


class Budget(_Frozen):
    """How many decoder layers to remove: exactly one of `layers` or `percent` is set."""

    layers: int | None = None
    percent: float | None = None  # in (0, 100)

    def resolve(self, num_layers: int) -> int:
        """The number of layers to remove from a stack of `num_layers`.

        Percentages round to the nearest integer (half up), and never below 1.
        """
        if self.layers is not None:
            return self.layers
        assert self.percent is not None
        return max(1, int(num_layers * self.percent / 100 + 0.5))


class HealSpec(_Frozen):
    """Training-free healing after removal (`heal linear [ridge R]`).

    method: "none" (default) or "linear": per removed run, a least-squares correction folded
        into the output projection of the kept layer before it (`prunec.healing`).
    ridge: the relative ridge strength that pulls each correction towards no correction;
        >= 0 (0 = plain least squares).
    """

    method: HealMethod = "none"
    ridge: float = DEFAULT_RIDGE

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def key(self) -> str:
        """What the healed objective depends on, as written (`heal linear ridge 0.001`)."""
        return "heal none" if not self.enabled else f"heal {self.method} ridge {self.ridge!r}"


class PruneSpec(_Frozen):
    """The layer-selection problem.

    budget: how many layers to remove; None only when `remove` is given.
    max_run: at most this many consecutive layers removed (None = unlimited).
    min_gap: at least this many kept layers between two removed ones (None = 0).
    keep_first / keep_last: never remove the first/last N layers.
    protect: layer indices that are never removed.
    remove: explicit layers to remove (manual selection); None = let the strategy choose.
    strategy: a registered strategy (`prunec.plan.registry.strategies()`); "manual" iff
        `remove` is given.
    spacing_weight: weight of the spacing term of the scored strategies' objective (None = 0);
        with `auto`, one more proposal (the domain ranking with this weight).
    search: `auto`'s compute budget: the most candidate evaluations on the search part.
    batch_size: calibration batch size.
    tokens: statistic over all tokens or the last token of each sample.
    heal: training-free healing of the removed runs (default: none).
    """

    budget: Budget | None = None
    max_run: int | None = None
    min_gap: int | None = None
    keep_first: int = 0
    keep_last: int = 0
    protect: tuple[int, ...] = ()
    remove: tuple[int, ...] | None = None
    strategy: str = "auto"
    spacing_weight: float | None = None
    search: int = DEFAULT_SEARCH
    batch_size: int = 4
    tokens: TokenScope = "all"
    heal: HealSpec = HealSpec()


class VerifyGate(_Frozen):
    """A retention gate: the pruned model must keep `threshold` of the original's score.

    threshold: a fraction in (0, 1] (the spec writes a percentage).
    data: evaluation data (file, folder or hub dataset); None = the domain's `eval`.
    metric: "accuracy" (exact match by greedy generation) or "nll" (answer NLL, retention is
        original / pruned).
    """

    domain: str
    threshold: float
    data: DataSource | None = None
    metric: Literal["accuracy", "nll"] = "accuracy"


class VerifySpec(_Frozen):
    """Verification after emission. samples: eval lines per domain (None = all)."""

    gates: tuple[VerifyGate, ...] = ()
    samples: int | None = None


class TargetSpec(_Frozen):
    """An artifact to emit.

    kind: a registered target kind (`prunec.plan.registry.target_kinds()`: "hf", "onnx", ...).
    path: absolute output directory, written atomically.
    options: the kind's options as validated by its `Options` model, defaults filled in
        (`backend_for(kind).options(target)` gives them typed).
    """

    kind: str
    path: Path
    options: dict[str, Any] = Field(default_factory=dict)


class Plan(_Frozen):
    """A validated `.prune` file.

    spec_path: the spec file (absolute), or None when parsed from a string.
    spec_text: the exact source text (the model card and lockfile quote it).
    spans: where each setting was written, keyed by dotted path ("prune.budget",
        "prune.remove.2", "domains.math.weight", "verify.math", "targets.0"), so later stages
        (which learn the model's layer count) can point errors at the spec.
    """

    spec_path: Path | None = None
    spec_text: str = ""
    model: ModelSpec
    domains: tuple[DomainSpec, ...] = ()
    prune: PruneSpec = PruneSpec()
    verify: VerifySpec = VerifySpec()
    targets: tuple[TargetSpec, ...] = ()
    spans: SkipJsonSchema[dict[str, Span]] = Field(default_factory=dict, exclude=True, repr=False)

    def domain(self, name: str) -> DomainSpec:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)

    def normalized_weights(self) -> dict[str, float]:
        """Domain weights scaled to sum to 1."""
        total = sum(d.weight for d in self.domains)
        return {d.name: d.weight / total for d in self.domains}

    def span(self, key: str) -> Span | None:
        return self.spans.get(key)
