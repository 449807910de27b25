"""`prunec check --deep`: what a build would report about a spec's data and model config,
found without loading the model.

Every data and eval source is read through the build's own reader, every record checked (its
images opened, URLs downloaded, eval answers present), and the model's config.json parsed.
Files that `check` only warns about are errors here, as they are for the build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunec.data.images import DataUnavailable
from prunec.data.reader import read_calibration, read_evaluation, source_fields
from prunec.errors import Diagnostic, SourceMap, Span, SpecError
from prunec.plan.model import DataSource, DomainSpec, Plan


def deep_diagnostics(plan: Plan) -> tuple[list[Diagnostic], SourceMap]:
    """Every problem a build would find in the data and the config, with their sources.

    Includes the build's errors for files that do not exist (E310, E311) in place of
    `check`'s warnings (W301, W302).
    """
    from prunec.pipeline import preflight

    out: list[Diagnostic] = []
    sources = SourceMap()

    def collect(read: Any, *args: Any, **kwargs: Any) -> None:
        try:
            read(*args, **kwargs)
        except SpecError as err:
            out.extend(err.diagnostics)
            sources.texts.update(err.sources.texts)
        except DataUnavailable as err:
            out.append(Diagnostic(err.code, str(err)))

    collect(preflight, plan)
    for domain in plan.domains:
        if _exists(domain.data):
            collect(read_calibration, domain, check_all=True)
        for source in _eval_sources(plan, domain):
            if _exists(source):
                collect(read_evaluation, domain, source, plan.verify.samples, check_all=True)
        if not out:
            out += _unused_fields(plan, domain)
    out += _config_problems(plan, sources)
    return out, sources


def _unused_fields(plan: Plan, domain: DomainSpec) -> list[Diagnostic]:
    """E337 for a field `fields` names that none of the domain's sources has.

    The reader requires the text field everywhere (and answers in eval data), but an image
    or answer field may be missing from one source; missing from all, it is a misspelling.
    """
    if domain.fields is None:
        return []
    seen = source_fields(domain.data, domain.split, domain.config)
    for source in _eval_sources(plan, domain):
        seen |= source_fields(source, domain.eval_split, domain.config)
    out = []
    for part in ("image", "answer"):
        name = getattr(domain.fields, part)
        if name is not None and name not in seen:
            listed = ", ".join(f"`{k}`" for k in sorted(seen)[:12]) or "none"
            out.append(
                Diagnostic(
                    "E337",
                    f"no source of domain `{domain.name}` has the field `{name}` "
                    f"(named by `fields {part}`); fields found: {listed}",
                    plan.span(f"domains.{domain.name}.fields.{part}"),
                )
            )
    return out


def _exists(source: DataSource) -> bool:
    # A missing path is preflight's E310 already; hub datasets are tried by the reader.
    return not isinstance(source, Path) or source.exists()


def _eval_sources(plan: Plan, domain: DomainSpec) -> list[DataSource]:
    found: list[DataSource] = [domain.eval] if domain.eval is not None else []
    for gate in plan.verify.gates:
        if gate.domain == domain.name and gate.data is not None and gate.data not in found:
            found.append(gate.data)
    return found


def _config_problems(plan: Plan, sources: SourceMap) -> list[Diagnostic]:
    """E350 for a local config.json that is unreadable or not a model config; for a hub
    model, its cached config's layer-count checks (W351 when it is not cached)."""
    from prunec.plan.model_info import layer_count
    from prunec.syntax.model_checks import validate_against_model

    if plan.model.local:
        path = Path(plan.model.source) / "config.json"
        if not Path(plan.model.source).is_dir():
            return []  # preflight's E311
    else:
        cached = _cached_hub_config(plan)
        if cached is None:
            message = (
                f"the hub model `{plan.model.source}` is not in the local cache: its config "
                "is checked when the build downloads it"
            )
            return [Diagnostic("W351", message, plan.span("model"), severity="warning")]
        path = cached
    config, problem = _parse_config(path, sources)
    if problem is not None:
        return [problem]
    count = layer_count(config)
    if count is None or plan.model.local:  # local counts were checked by `check` already
        return []
    return validate_against_model(plan, count)


def _cached_hub_config(plan: Plan) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            plan.model.source, "config.json", revision=plan.model.revision
        )
    except Exception:  # not a valid repo id for the cache layout: nothing cached
        return None
    return Path(found) if isinstance(found, str) else None


def _parse_config(path: Path, sources: SourceMap) -> tuple[dict[str, Any], Diagnostic | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return {}, Diagnostic("E350", f"cannot read the model config {path}: {reason}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        sources.add(str(path), text)
        span = Span(str(path), err.lineno, err.colno, err.lineno, err.colno + 1)
        return {}, Diagnostic("E350", f"the model config is not valid JSON: {err.msg}", span)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        message = f"the model config {path} has no `model_type`: it is not a transformers config"
        return {}, Diagnostic("E350", message)
    return config, None
