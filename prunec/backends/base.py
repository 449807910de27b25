"""What every target kind declares and implements; the pipeline knows targets only through this.

A target kind is a subpackage of `prunec.backends` whose `__init__` exposes `BACKEND`, an
instance of a `Backend` subclass (or a plug-in distribution's `prunec.targets` entry point).
It owns:

- `name`: the word after `target` in a spec;
- `Options`: a pydantic model of the options its `{ ... }` block accepts (the front end
  validates against it, with "did you mean" for misspelt names);
- `unsupported(config)`: why it cannot handle a model, from config.json alone (checked by
  `prunec check` when the config is readable, and by `build` before any work);
- `streams`: whether it can write from the source checkpoint's files without weights in memory;
- `prepare(job)`: for kinds that stream, what they need from the pruned model in memory (e.g.
  reference outputs), taken before a build releases the model; passed to `emit` as
  `job.prepared`;
- `needs_samples`: whether it wants real calibration inputs for its parity checks;
- `emit(job)`: write the artifact into a staging directory, self-check it and return a report
  whose `summary()` is the build log's line and whose `seconds` is the wall time.

This module must import light (no torch): `prunec check` reads the declarations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from prunec.errors import BuildError

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel
    from prunec.plan.model import Plan, TargetSpec
    from prunec.planning import Selection
    from prunec.scoring import LayerScores


class TargetOptions(BaseModel):
    """Base of every kind's options: frozen, unknown names rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetReport(Protocol):
    """What every emitter returns."""

    @property
    def seconds(self) -> float: ...

    def summary(self) -> str: ...


@dataclass(frozen=True)
class EmitJob:
    """Everything an emitter may use.

    loaded: the pruned model in memory (surgery applied); None for a streamed build, where
        the emitter works from `plan.model`'s files and `selection` alone.
    staged: the empty staging directory to write into (published only if every target of the
        build succeeded).
    samples: real model inputs from the calibration data (only for kinds with
        `needs_samples`; empty otherwise).
    scores: calibration scores (None for a manual `remove` list).
    prepared: what the kind's `prepare` returned while the model was still in memory (then
        `loaded` is None: the build released the model); None otherwise.
    """

    plan: Plan
    target: TargetSpec
    selection: Selection
    staged: Path
    loaded: LoadedModel | None = None
    samples: Sequence[Mapping[str, Any]] = ()
    scores: LayerScores | None = None
    prepared: Any = None


class Backend(ABC):
    """A target kind. Subclasses set the class attributes and implement `emit`."""

    name: ClassVar[str]
    #: One line for `prunec --help`-style listings and docs.
    summary: ClassVar[str] = ""
    Options: ClassVar[type[TargetOptions]] = TargetOptions
    streams: ClassVar[bool] = False
    needs_samples: ClassVar[bool] = False

    def unsupported(self, config: Mapping[str, Any]) -> str | None:
        """Why this kind cannot handle the model whose config.json is `config`; None if it can."""
        return None

    def options(self, target: TargetSpec) -> Any:
        """The target's options as this kind's typed `Options`."""
        return self.Options.model_validate(target.options)

    def prepare(self, job: EmitJob) -> Any:
        """What `emit` will need from the pruned model `job.loaded`, taken before the build
        releases it (called for kinds with `streams`, in builds that hold a model)."""
        return None

    @abstractmethod
    def emit(self, job: EmitJob) -> TargetReport:
        """Write the artifact into `job.staged`, self-check it, return its report."""

    def check_supported(self, config: Mapping[str, Any]) -> None:
        """BuildError naming the model type when `unsupported(config)` gives a reason."""
        reason = self.unsupported(config)
        if reason is not None:
            raise BuildError(f"target {self.name}: {reason}")


def backend_for(kind: str) -> Backend:
    """The registered backend of a target kind (the front end has already validated it)."""
    from prunec.plan.registry import target_kinds

    backend: Backend = target_kinds()[kind]
    return backend
