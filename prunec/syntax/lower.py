"""Syntax tree -> validated Plan: every semantic check, all problems collected before raising."""

from __future__ import annotations

import itertools
import math
import os
import re
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from prunec.errors import Diagnostic, Span, did_you_mean
from prunec.plan.model import (
    HEAL_METHODS,
    HUB_DATASET_PREFIX,
    Budget,
    DataSource,
    DomainSpec,
    FieldNames,
    HealSpec,
    HubDataset,
    ModelSpec,
    Plan,
    PruneSpec,
    TargetSpec,
    VerifyGate,
    VerifySpec,
)
from prunec.plan.registry import strategies, target_kinds
from prunec.syntax.ast import Item, Setting, SpecFile, Tok

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "mps", "auto")
METRICS = ("accuracy", "nll")
TOKEN_SCOPES = ("all", "last")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: A `datasets` split expression: `train`, `train[:80%]`, `train+validation`, ...
_SPLIT = re.compile(r"^[A-Za-z0-9_.-]+(\[[^\[\]]*\])?(\+[A-Za-z0-9_.-]+(\[[^\[\]]*\])?)*$")
#: Record parts a `fields` mapping may rename.
FIELD_PARTS = ("text", "image", "answer")
#: Extensions that make a data path a single file, to which `split`/`config` cannot apply.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".tsv")
_ONCE = ("model", "prune", "verify")


def unescape(text: str) -> str | None:
    """The value of a STRING token (quotes included); None on an unknown escape."""
    out: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in ('"', "\\"):
                return None
            out.append(nxt)
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def is_dir(path: Path) -> bool:
    """Path.is_dir that answers False instead of raising on names the OS rejects (too long)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    """Path.is_file that answers False instead of raising on names the OS rejects."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_whole(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


class _Lowerer:
    """Walks the syntax tree once, recording values, spans and diagnostics."""

    def __init__(self, spec: SpecFile, base_dir: Path):
        self.spec = spec
        self.base_dir = base_dir
        self.diags: list[Diagnostic] = []
        self.spans: dict[str, Span] = {}
        #: `protect`/`remove` -> the span of each accepted index, aligned with the values.
        self.index_spans: dict[str, list[Span]] = {}

    # ---------------------------------------------------------------- helpers

    def error(self, code: str, message: str, span: Span | None, **extra: Any) -> None:
        self.diags.append(Diagnostic(code, message, span, **extra))

    def string(self, tok: Tok) -> str:
        value = unescape(tok.text)
        if value is None:
            self.error("E105", "invalid escape in string", tok.span, expected='`\\"` or `\\\\`')
            return tok.text[1:-1]
        return value

    def whole(self, tok: Tok, what: str, minimum: int) -> int | None:
        if not _is_whole(tok.text):
            self.error("E205", f"{what} must be a whole number", tok.span)
            return None
        value = int(tok.text)
        if value < minimum:
            self.error("E205", f"{what} must be at least {minimum}, not {value}", tok.span)
            return None
        return value

    def path(self, tok: Tok) -> Path:
        return self.resolve(self.string(tok))

    def resolve(self, raw: str) -> Path:
        return Path(os.path.abspath(self.base_dir / os.path.expanduser(raw)))

    def data_source(self, tok: Tok) -> DataSource | None:
        """A data path, or a hub dataset written `hf://datasets/ORG/NAME[@REVISION]`."""
        raw = self.string(tok)
        if "://" not in raw:
            return self.resolve(raw)
        hub = HubDataset.parse(raw)
        if hub is not None:
            return hub
        guess = None
        for prefix in ("https://huggingface.co/datasets/", "hf://"):
            if raw.startswith(prefix) and not raw.startswith(HUB_DATASET_PREFIX):
                rest = raw.removeprefix(prefix).removeprefix("datasets/").strip("/")
                guess = f'did you mean "{HUB_DATASET_PREFIX}{rest}"?'
        self.error(
            "E242",
            f"`{raw}` is neither a local path nor a hub dataset",
            tok.span,
            expected='a path, or "hf://datasets/ORG/NAME" (optionally "@REVISION")',
            help=guess,
        )
        return None

    def choice(self, code: str, tok: Tok, what: str, choices: Iterable[str]) -> str | None:
        choices = tuple(choices)
        if tok.text in choices:
            return tok.text
        guess = did_you_mean(tok.text, choices)
        listed = ", ".join(f"`{c}`" for c in choices)
        self.error(
            code,
            f"unknown {what} `{tok.text}`",
            tok.span,
            expected=f"one of {listed}",
            help=f"did you mean `{guess}`?" if guess else None,
        )
        return None

    def unique_settings(self, settings: Iterable[Setting], where: str) -> dict[str, Setting]:
        """Settings by key, in source order; a repeated key is an error pointing at the repeat.

        `verify` gates may repeat their domain (one gate per metric), so each is keyed by its
        position; `gate` checks its own duplicates.
        """
        seen: dict[str, Setting] = {}
        for setting in settings:
            key = setting.key.text
            if setting.rule == "gate":
                seen[f"gate {len(seen)}"] = setting
                continue
            if key in seen:
                first = seen[key].key.span
                self.error(
                    "E203",
                    f"`{key}` is set twice in {where}",
                    setting.key.span,
                    notes=(f"first set at line {first.line}",),
                    help="remove one of them",
                )
                continue
            seen[key] = setting
        return seen

    # ---------------------------------------------------------------- items

    def lower(self) -> Plan | None:
        by_rule: dict[str, list[Item]] = {}
        for item in self.spec.items:
            by_rule.setdefault(item.rule, []).append(item)
        for rule in _ONCE:
            for extra in by_rule.get(rule, [])[1:]:
                first = by_rule[rule][0].keyword.span
                self.error(
                    "E202",
                    f"a second `{rule}` block",
                    extra.keyword.span,
                    notes=(f"the first is at line {first.line}",),
                    help=f"merge the two `{rule}` blocks",
                )
        models = by_rule.get("model", [])
        model = self.model(models[0]) if models else None
        if not models:
            self.error(
                "E201",
                "the spec has no `model`",
                Span.point(self.spec.filename, 1, 1),
                help='add a line such as `model "org/name"`',
            )
        domains = self.domains(by_rule.get("domain", []))
        prune_items = by_rule.get("prune", [])
        prune = self.prune(prune_items[0] if prune_items else None, domains)
        verify_items = by_rule.get("verify", [])
        verify = self.verify(verify_items[0], domains) if verify_items else VerifySpec()
        self.check_dataset_settings(domains, list(verify.gates))
        targets = self.targets(by_rule.get("target", []))
        if self.diags or model is None or prune is None:
            return None
        return Plan(
            model=model,
            domains=tuple(domains.values()),
            prune=prune,
            verify=verify,
            targets=tuple(targets),
            spans=self.spans,
        )

    def model(self, item: Item) -> ModelSpec | None:
        source_tok = item.head[1]
        self.spans["model"] = source_tok.span
        raw = self.string(source_tok)
        settings = self.unique_settings(item.body or (), "`model`")
        values: dict[str, Any] = {}
        expanded = os.path.expanduser(raw)
        local = raw.startswith((".", "/", "~")) or is_dir(self.base_dir / expanded)
        if local:
            values["source"] = os.path.abspath(self.base_dir / expanded)
        elif _HUB_ID.match(raw):
            values["source"] = raw
        else:
            self.error(
                "E229",
                f"`{raw}` is neither an existing directory nor a hub id",
                source_tok.span,
                expected='a hub id such as "org/name", or a path starting with `.`, `/` or `~`',
            )
        values["local"] = local
        for key, setting in settings.items():
            self.spans[f"model.{key}"] = setting.span
            args = setting.args
            if key == "revision":
                values["revision"] = self.string(args[0])
            elif key == "dtype":
                values["dtype"] = self.dtype(args[0])
            elif key == "device":
                values["device"] = self.device(args)
            elif key == "trust_remote_code":
                values["trust_remote_code"] = True
        if any(v is None for k, v in values.items() if k in ("dtype", "device")):
            return None
        if "source" not in values:
            return None
        return ModelSpec(**values)

    def dtype(self, tok: Tok) -> str | None:
        if tok.text in _DTYPE_ALIASES:
            self.error(
                "E208",
                f"unknown dtype `{tok.text}`",
                tok.span,
                expected="one of " + ", ".join(f"`{d}`" for d in DTYPES),
                help=f"did you mean `{_DTYPE_ALIASES[tok.text]}`?",
            )
            return None
        return self.choice("E208", tok, "dtype", DTYPES)

    def device(self, args: tuple[Tok, ...]) -> str | None:
        name = args[0]
        if name.text == "gpu":
            self.error("E209", "unknown device `gpu`", name.span, help="did you mean `cuda`?")
            return None
        if name.text not in DEVICES:
            self.choice("E209", name, "device", (*DEVICES, "cuda:N"))
            return None
        if len(args) == 1:
            return name.text
        if name.text != "cuda":
            self.error("E209", f"`{name.text}` takes no device index", args[1].span)
            return None
        index = self.whole(args[2], "a cuda device index", 0)
        return None if index is None else f"cuda:{index}"

    def domains(self, items: list[Item]) -> dict[str, DomainSpec]:
        out: dict[str, DomainSpec] = {}
        first_at: dict[str, Span] = {}
        for item in items:
            name_tok = item.head[1]
            name = name_tok.text
            if name in first_at:
                self.error(
                    "E204",
                    f"domain `{name}` is defined twice",
                    name_tok.span,
                    notes=(f"first defined at line {first_at[name].line}",),
                )
                continue
            first_at[name] = name_tok.span
            self.spans[f"domains.{name}"] = name_tok.span
            domain = self.domain(item, name)
            if domain is not None:
                out[name] = domain
        return out

    def domain(self, item: Item, name: str) -> DomainSpec | None:
        settings = self.unique_settings(item.body or (), f"domain `{name}`")
        values: dict[str, Any] = {"name": name}
        ok = True
        for key, setting in settings.items():
            tok = setting.args[0]
            # Paths point at the string itself, so a missing-file warning underlines it.
            self.spans[f"domains.{name}.{key}"] = tok.span if tok.kind == "STRING" else setting.span
            if key in ("data", "eval"):
                source = self.data_source(tok)
                ok = ok and source is not None
                values[key] = source
            elif key == "fields":
                mapping = self.fields(setting, name)
                ok = ok and mapping is not None
                values["fields"] = mapping
            elif key in ("split", "eval_split", "config"):
                text = self.dataset_name(tok, key)
                ok = ok and text is not None
                values[key] = text
            elif key == "weight":
                weight = float(tok.text)
                if not 0 < weight < math.inf:
                    self.error("E206", f"weight must be > 0 and finite, not {tok.text}", tok.span)
                    ok = False
                values["weight"] = weight
            else:
                minimum = 0 if key == "seed" else 1
                number = self.whole(tok, f"`{key}`", minimum)
                ok = ok and number is not None
                values[key] = number
        if "data" not in values:
            self.error(
                "E224",
                f"domain `{name}` has no `data`",
                item.head[1].span,
                help='add `data "path/to/calibration.jsonl"` to the block',
            )
            return None
        return DomainSpec(**values) if ok else None

    def fields(self, setting: Setting, domain: str) -> FieldNames | None:
        """`fields text "q", image "p"`: each part at most once, to a non-empty name."""
        args = [t for t in setting.args if t.kind != "COMMA"]
        mapped: dict[str, str] = {}
        first_at: dict[str, Span] = {}
        ok = True
        for part, column in zip(args[::2], args[1::2], strict=True):
            if part.text not in FIELD_PARTS:
                self.choice("E240", part, "record part", FIELD_PARTS)
                ok = False
                continue
            if part.text in first_at:
                self.error(
                    "E240",
                    f"`{part.text}` is mapped twice in `fields`",
                    part.span,
                    notes=(f"first mapped at column {first_at[part.text].col}",),
                )
                ok = False
                continue
            first_at[part.text] = part.span
            name = self.string(column)
            if not name.strip():
                self.error("E240", f"an empty field name for `{part.text}`", column.span)
                ok = False
                continue
            other = next((p for p, n in mapped.items() if n == name), None)
            if other is not None:
                self.error(
                    "E240", f"`{other}` and `{part.text}` both read the field `{name}`", column.span
                )
                ok = False
                continue
            mapped[part.text] = name
            self.spans[f"domains.{domain}.fields.{part.text}"] = column.span
        return FieldNames(**mapped) if ok else None

    def dataset_name(self, tok: Tok, key: str) -> str | None:
        """The value of `split`, `eval_split` or `config`."""
        value = self.string(tok)
        if key == "config":
            if value.strip():
                return value
            self.error("E241", "`config` names an empty configuration", tok.span)
            return None
        if _SPLIT.match(value):
            return value
        self.error(
            "E241",
            f"`{value}` is not a split",
            tok.span,
            expected='a split name such as "train", optionally sliced ("train[:80%]") '
            'or joined ("train+validation")',
        )
        return None

    def check_dataset_settings(
        self, domains: dict[str, DomainSpec], gates: list[VerifyGate]
    ) -> None:
        """`split`, `eval_split` and `config` must apply to a folder or a hub dataset."""
        for domain in domains.values():
            gate_data = [g.data for g in gates if g.domain == domain.name and g.data is not None]
            evals = [*([domain.eval] if domain.eval is not None else []), *gate_data]
            targets = {
                "split": ([domain.data], "`data`"),
                "eval_split": (evals, "`eval` or a `verify` gate's data"),
                "config": ([domain.data, *evals], "the domain's data"),
            }
            for key, (sources, what) in targets.items():
                if getattr(domain, key) is None or any(_has_splits(s) for s in sources):
                    continue
                self.error(
                    "E241",
                    f"`{key}` applies to folders and hub datasets, and {what} is a single file",
                    self.spans.get(f"domains.{domain.name}.{key}"),
                    help=f"remove `{key}`",
                )

    # ---------------------------------------------------------------- prune

    def prune(self, item: Item | None, domains: dict[str, DomainSpec]) -> PruneSpec | None:
        if item is None:
            self.error(
                "E223",
                "the spec has no `prune` block",
                Span.point(self.spec.filename, 1, 1),
                help="add `prune { budget 25% }` (or an explicit `remove` list)",
            )
            return None
        self.spans["prune"] = item.keyword.span
        settings = self.unique_settings(item.body or (), "`prune`")
        values: dict[str, Any] = {}
        ok = True
        for key, setting in settings.items():
            self.spans[f"prune.{key}"] = setting.span
            handler = self._PRUNE_HANDLERS[key]
            ok = handler(self, setting, values) and ok
        # Cross-checks run even after a failed setting, so one run reports everything; a
        # setting that failed is absent from `values` but present in `settings`.
        ok = self.prune_cross_checks(item, settings, values, domains) and ok
        return PruneSpec(**values) if ok else None

    def _budget(self, setting: Setting, values: dict[str, Any]) -> bool:
        number, unit = setting.args
        if unit.kind == "PERCENT":
            try:
                percent = float(number.text)
            except ValueError:
                percent = -1.0
            if not 0 < percent < 100:
                self.error(
                    "E207",
                    f"a percentage budget must be between 0 and 100 (exclusive), not {number.text}%",
                    _join(number.span, unit.span),
                )
                return False
            values["budget"] = Budget(percent=percent)
            return True
        layers = self.whole(number, "the layer budget", 1)
        if layers is None:
            return False
        values["budget"] = Budget(layers=layers)
        return True

    def _spacing(self, setting: Setting, values: dict[str, Any]) -> bool:
        ok = True
        seen: dict[str, Span] = {}
        args = setting.args
        for key, number in zip(args[::2], args[1::2], strict=True):
            if key.text in seen:
                self.error("E203", f"`{key.text}` is set twice in `spacing`", key.span)
                ok = False
                continue
            seen[key.text] = key.span
            self.spans[f"prune.{key.text}"] = _join(key.span, number.span)
            value = self.whole(number, f"`{key.text}`", 1 if key.text == "max_run" else 0)
            ok = ok and value is not None
            values[key.text] = value
        return ok

    def _keep(self, setting: Setting, values: dict[str, Any]) -> bool:
        ok = True
        ends = [t for t in setting.args if t.kind != "COMMA"]
        for end, number in zip(ends[::2], ends[1::2], strict=True):
            field = f"keep_{end.text}"
            if field in values:
                self.error("E203", f"`{end.text}` is given twice in `keep`", end.span)
                ok = False
                continue
            self.spans[f"prune.{field}"] = _join(end.span, number.span)
            value = self.whole(number, f"`keep {end.text}`", 0)
            ok = ok and value is not None
            values[field] = value
        return ok

    def _indices(self, setting: Setting, values: dict[str, Any]) -> bool:
        key = setting.key.text
        ok = True
        out: list[int] = []
        first_at: dict[int, Span] = {}
        numbers = [t for t in setting.args if t.kind == "NUMBER"]
        for position, tok in enumerate(numbers):
            self.spans[f"prune.{key}.{position}"] = tok.span
            index = self.whole(tok, "a layer index", 0)
            if index is None:
                ok = False
                continue
            if index in first_at:
                self.error(
                    "E219",
                    f"layer {index} is listed twice in `{key}`",
                    tok.span,
                    notes=(f"first listed at column {first_at[index].col}",),
                )
                ok = False
                continue
            first_at[index] = tok.span
            out.append(index)
            self.index_spans.setdefault(key, []).append(tok.span)
        values[key] = tuple(out)
        return ok

    def _strategy(self, setting: Setting, values: dict[str, Any]) -> bool:
        value = self.choice("E210", setting.args[0], "strategy", strategies().names())
        values["strategy"] = value
        return value is not None

    def _spacing_weight(self, setting: Setting, values: dict[str, Any]) -> bool:
        tok = setting.args[0]
        weight = float(tok.text)
        if not 0 <= weight < math.inf:
            self.error("E206", f"`spacing_weight` must be >= 0, not {tok.text}", tok.span)
            return False
        values["spacing_weight"] = weight
        return True

    def _search(self, setting: Setting, values: dict[str, Any]) -> bool:
        value = self.whole(setting.args[0], "`search`", 1)
        values["search"] = value
        return value is not None

    def _batch_size(self, setting: Setting, values: dict[str, Any]) -> bool:
        value = self.whole(setting.args[0], "`batch_size`", 1)
        values["batch_size"] = value
        return value is not None

    def _tokens(self, setting: Setting, values: dict[str, Any]) -> bool:
        value = self.choice("E211", setting.args[0], "token scope", TOKEN_SCOPES)
        values["tokens"] = value
        return value is not None

    def _heal(self, setting: Setting, values: dict[str, Any]) -> bool:
        method_tok, *option = setting.args
        method = self.choice("E233", method_tok, "healing method", HEAL_METHODS)
        if method is None:
            return False
        if not option:
            values["heal"] = HealSpec(method=method)  # type: ignore[arg-type]  # checked above
            return True
        ridge_key, number = option
        self.spans["prune.heal.ridge"] = _join(ridge_key.span, number.span)
        if method == "none":
            self.error(
                "E234",
                "`ridge` sets how strongly `heal linear` holds its corrections back; "
                "`heal none` fits none",
                _join(ridge_key.span, number.span),
                help="drop `ridge ...`, or write `heal linear`",
            )
            return False
        ridge = float(number.text)
        if not 0 <= ridge < math.inf:
            self.error(
                "E234", f"`ridge` must be a finite number >= 0, not {number.text}", number.span
            )
            return False
        values["heal"] = HealSpec(method=method, ridge=ridge)  # type: ignore[arg-type]
        return True

    _PRUNE_HANDLERS: ClassVar[dict[str, Callable[[_Lowerer, Setting, dict[str, Any]], bool]]] = {
        "budget": _budget,
        "spacing": _spacing,
        "keep": _keep,
        "protect": _indices,
        "remove": _indices,
        "strategy": _strategy,
        "spacing_weight": _spacing_weight,
        "search": _search,
        "batch_size": _batch_size,
        "tokens": _tokens,
        "heal": _heal,
    }

    def prune_cross_checks(
        self,
        item: Item,
        settings: dict[str, Setting],
        values: dict[str, Any],
        domains: dict[str, DomainSpec],
    ) -> bool:
        before = len(self.diags)
        remove: tuple[int, ...] | None = values.get("remove")
        strategy_set = "strategy" in settings
        strategy = values.get("strategy", "manual" if remove is not None else "auto")
        values["strategy"] = strategy
        budget: Budget | None = values.get("budget")
        if remove is not None:
            self.check_remove(remove, settings, values, strategy, strategy_set, budget)
        elif strategy == "manual" and "remove" not in settings:
            self.error(
                "E227",
                "`strategy manual` needs a `remove` list",
                settings["strategy"].args[0].span,
                help="list the layers to remove, e.g. `remove 3, 4, 9`",
            )
        self.check_strategy_options(settings, strategy)
        if "budget" not in settings and "remove" not in settings:
            self.error(
                "E223",
                "`prune` has no `budget` and no `remove` list",
                item.keyword.span,
                help="add `budget 25%` or `budget 8 layers`",
            )
        info = strategies().get(strategy)
        if info is not None and info.scores and not self.declares_domains():
            span = settings["strategy"].args[0].span if strategy_set else item.keyword.span
            implicit = "" if strategy_set else " (the default)"
            self.error(
                "E225",
                f"strategy `{strategy}`{implicit} scores layers on calibration data, "
                "but the spec has no `domain`",
                span,
                help="add a `domain NAME { data ... }` block, or use `last` or `uniform`",
            )
        heal: HealSpec | None = values.get("heal")
        if heal is not None and heal.enabled and not self.declares_domains():
            self.error(
                "E235",
                f"`heal {heal.method}` fits its corrections on calibration data, "
                "but the spec has no `domain`",
                settings["heal"].span,
                help="add a `domain NAME { data ... }` block, or drop the `heal` line",
            )
        return len(self.diags) == before

    def check_strategy_options(self, settings: dict[str, Setting], strategy: str) -> None:
        """E232 for a setting that is another strategy's option but not this one's."""
        declared = strategies().all()
        chosen = declared.get(strategy)
        if chosen is None:
            return  # E210 already
        for name, setting in settings.items():
            owners = [s.name for s in declared.values() if name in s.Options.model_fields]
            if not owners or name in chosen.Options.model_fields:
                continue
            field = declared[owners[0]].Options.model_fields[name]
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            self.error(
                "E232",
                f"`{name}` sets {field.description}; strategy `{strategy}` "
                f"{extra.get('without', 'does not read it')}",
                setting.key.span,
                help=f"drop the `{name}` line, or use "
                + " or ".join(f"`strategy {owner}`" for owner in owners),
            )

    def declares_domains(self) -> bool:
        return any(item.rule == "domain" for item in self.spec.items)

    def check_remove(
        self,
        remove: tuple[int, ...],
        settings: dict[str, Setting],
        values: dict[str, Any],
        strategy: str,
        strategy_set: bool,
        budget: Budget | None,
    ) -> None:
        if strategy_set and strategy != "manual":
            self.error(
                "E217",
                f"`remove` chooses the layers itself, so strategy `{strategy}` has nothing to do",
                settings["strategy"].args[0].span,
                help="drop the `strategy` line or write `strategy manual`",
            )
        if budget is not None and budget.layers is not None and budget.layers != len(remove):
            self.error(
                "E216",
                f"`remove` lists {len(remove)} layers but the budget is {budget.layers}",
                self.spans["prune.budget"],
                notes=(f"`remove` is at line {self.spans['prune.remove'].line}",),
                help="drop the `budget` line; `remove` already says how many",
            )
        protected = set(values.get("protect", ()))
        keep_first = values.get("keep_first") or 0
        for span, index in zip(self.index_spans.get("remove", []), remove, strict=True):
            if index in protected:
                self.error("E218", f"layer {index} is both removed and protected", span)
            elif index < keep_first:
                self.error(
                    "E218",
                    f"layer {index} is removed but `keep first {keep_first}` keeps it",
                    span,
                )
        self.check_remove_spacing(remove, values)

    def check_remove_spacing(self, remove: tuple[int, ...], values: dict[str, Any]) -> None:
        ordered = sorted(remove)
        max_run: int | None = values.get("max_run")
        min_gap: int | None = values.get("min_gap")
        run = 1
        for prev, cur in itertools.pairwise(ordered):
            run = run + 1 if cur == prev + 1 else 1
            span = self.index_spans["remove"][remove.index(cur)]
            if max_run is not None and run > max_run:
                self.error(
                    "E230",
                    f"removing layer {cur} makes a run of {run} consecutive removed layers",
                    span,
                    notes=(f"`spacing max_run {max_run}` allows at most {max_run}",),
                )
            elif min_gap is not None and cur - prev - 1 < min_gap:
                self.error(
                    "E230",
                    f"layers {prev} and {cur} have {cur - prev - 1} kept layers between them",
                    span,
                    notes=(f"`spacing min_gap {min_gap}` needs at least {min_gap}",),
                )

    # ---------------------------------------------------------------- verify

    def verify(self, item: Item, domains: dict[str, DomainSpec]) -> VerifySpec:
        gates: list[VerifyGate] = []
        samples: int | None = None
        seen_gates: dict[tuple[str, str], Span] = {}
        settings = self.unique_settings(item.body or (), "`verify`")
        for setting in settings.values():
            if setting.rule == "samples":
                self.spans["verify.samples"] = setting.span
                samples = self.whole(setting.args[0], "`samples`", 1)
                continue
            gate = self.gate(setting, domains, seen_gates, len(gates))
            if gate is not None:
                gates.append(gate)
        return VerifySpec(gates=tuple(gates), samples=samples)

    def gate(
        self,
        setting: Setting,
        domains: dict[str, DomainSpec],
        seen: dict[tuple[str, str], Span],
        position: int,
    ) -> VerifyGate | None:
        name = setting.key
        metric_tok = setting.tokens[1] if setting.tokens[1].kind == "NAME" else None
        rest = setting.tokens[2:] if metric_tok else setting.tokens[1:]
        number, percent = rest[1], rest[2]
        data_tok = rest[4] if len(rest) > 4 else None
        ok = True
        declared = self.declared_domains()
        if name.text not in declared:
            guess = did_you_mean(name.text, declared)
            known = ", ".join(f"`{d}`" for d in declared) or "none"
            self.error(
                "E212",
                f"`verify` names an unknown domain `{name.text}`",
                name.span,
                notes=(f"domains defined: {known}",),
                help=f"did you mean `{guess}`?" if guess else None,
            )
            ok = False
        metric = "accuracy"
        if metric_tok is not None:
            metric = self.choice("E213", metric_tok, "metric", METRICS) or ""
            ok = ok and bool(metric)
        threshold = float(number.text)
        if not 0 < threshold <= 100:
            self.error(
                "E214",
                f"a retention threshold must be in (0, 100], not {number.text}%",
                _join(number.span, percent.span),
            )
            ok = False
        key = (name.text, metric)
        if ok and key in seen:
            self.error(
                "E228",
                f"a second `{metric}` gate for `{name.text}`",
                name.span,
                notes=(f"the first is at line {seen[key].line}",),
            )
            ok = False
        seen.setdefault(key, name.span)
        data = self.data_source(data_tok) if data_tok is not None else None
        ok = ok and (data_tok is None or data is not None)
        domain = domains.get(name.text)
        if data_tok is None and domain is not None and domain.eval is None:
            self.error(
                "E215",
                f'gate `{name.text}` has no data: no `on "file"` and domain `{name.text}` '
                "has no `eval`",
                setting.span,
                help=f'append `on "path/to/eval.jsonl"` or add `eval` to domain `{name.text}`',
            )
            ok = False
        self.spans[f"verify.{position}"] = setting.span
        if data_tok is not None:
            self.spans[f"verify.{position}.data"] = data_tok.span
        self.spans.setdefault(f"verify.{name.text}", setting.span)
        if not ok:
            return None
        return VerifyGate(
            domain=name.text,
            threshold=threshold / 100,
            data=data,
            metric=metric,  # type: ignore[arg-type]  # checked against METRICS above
        )

    def declared_domains(self) -> list[str]:
        """Every domain name written, including domains that failed their own checks."""
        names = [i.head[1].text for i in self.spec.items if i.rule == "domain"]
        return list(dict.fromkeys(names))

    # ---------------------------------------------------------------- targets

    def targets(self, items: list[Item]) -> list[TargetSpec]:
        kinds = target_kinds()
        out: list[TargetSpec] = []
        paths: dict[Path, Span] = {}
        for position, item in enumerate(items):
            kind_tok, path_tok = item.head[1], item.head[2]
            self.spans[f"targets.{position}"] = item.span
            self.spans[f"targets.{position}.path"] = path_tok.span
            kind = self.choice("E220", kind_tok, "target kind", kinds.names())
            path = self.path(path_tok)
            if path in paths:
                self.error(
                    "E226",
                    "two targets write to the same directory",
                    path_tok.span,
                    notes=(f"the first is at line {paths[path].line}",),
                )
            paths.setdefault(path, path_tok.span)
            backend = kinds.get(kind) if kind is not None else None
            options = self.target_options(item, backend, position)
            if kind is not None and options is not None:
                out.append(TargetSpec(kind=kind, path=path, options=options))
        return out

    def target_options(self, item: Item, backend: Any, position: int) -> dict[str, Any] | None:
        """The option block validated against the kind's `Options` model (defaults filled)."""
        values: dict[str, Any] = {}
        ok = True
        fields = backend.Options.model_fields if backend is not None else {}
        for setting in self.unique_settings(item.body or (), "the target").values():
            name, value = setting.key, setting.args[0]
            self.spans[f"targets.{position}.{name.text}"] = setting.span
            if backend is None:
                continue  # the unknown kind is reported already
            if name.text not in fields:
                if not fields:
                    message = f"`{backend.name}` targets take no options (`{name.text}`)"
                    self.error("E221", message, name.span)
                else:
                    self.choice("E221", name, f"{backend.name} option", fields)
                ok = False
                continue
            parsed = self.option_value(name.text, fields[name.text], value)
            ok = ok and parsed is not None
            values[name.text] = parsed
        if backend is None or not ok:
            return None
        try:
            options: dict[str, Any] = backend.Options.model_validate(values).model_dump()
        except ValidationError as err:  # a rule across options (each one alone was valid)
            for problem in err.errors():
                message = str(problem["msg"]).removeprefix("Value error, ")
                self.error("E222", f"`{backend.name}` options: {message}", item.span)
            return None
        return options

    def option_value(self, name: str, field: Any, tok: Tok) -> Any:
        """A target option's token as the Python value its field declares, or None (reported).

        Booleans are written `on`/`off`, choices as bare words, numbers as numbers (bounds
        from the field's `ge`/`le`), text as a bare word or a string.
        """
        annotation = field.annotation
        text = self.string(tok) if tok.kind == "STRING" else tok.text
        if annotation is bool:
            if text in ("on", "off"):
                return text == "on"
            return self.bad_option(name, tok, "`on` or `off`")
        if typing.get_origin(annotation) is typing.Literal:
            choices = [str(c) for c in typing.get_args(annotation)]
            if text in choices:
                return text
            return self.bad_option(name, tok, " or ".join(f"`{c}`" for c in choices))
        if annotation in (int, float):
            low, high = _bounds(field)
            whole = annotation is int
            valid = _is_whole(text) if whole else _is_number(text)
            value = (int(text) if whole else float(text)) if valid else None
            if (
                value is None
                or (low is not None and value < low)
                or (high is not None and value > high)
            ):
                kind = "a whole number" if whole else "a number"
                if low is not None and high is not None:
                    kind += f" from {low} to {high}"
                elif low is not None:
                    kind += f" of at least {low}"
                self.error("E222", f"`{name}` must be {kind}", tok.span)
                return None
            return value
        return text

    def bad_option(self, name: str, tok: Tok, expected: str) -> None:
        self.error("E222", f"invalid value `{tok.text}` for `{name}`", tok.span, expected=expected)


def _bounds(field: Any) -> tuple[float | None, float | None]:
    """The `ge` / `le` bounds of a pydantic field (None when unbounded)."""
    low = high = None
    for meta in field.metadata:
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
    return low, high


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _join(first: Span, last: Span) -> Span:
    return Span(first.file, first.line, first.col, last.end_line, last.end_col)


def _has_splits(source: DataSource) -> bool:
    """Whether `split`/`config` can apply: a hub dataset or a folder (existing or not yet)."""
    if isinstance(source, HubDataset):
        return True
    return not is_file(source) and source.suffix.lower() not in DATA_FILE_SUFFIXES


def lower(spec: SpecFile, base_dir: Path) -> tuple[Plan | None, list[Diagnostic]]:
    """The plan (None when there are errors) and every diagnostic found, in source order."""
    lowerer = _Lowerer(spec, base_dir)
    plan = lowerer.lower()
    return plan, sorted(lowerer.diags, key=_position)


def _position(diag: Diagnostic) -> tuple[int, int]:
    return (diag.span.line, diag.span.col) if diag.span else (0, 0)
