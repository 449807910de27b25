"""Find the language decoder's layer stack: from the architecture table, or by inspection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunec.arch.table import ArchEntry, arch_entry
from prunec.errors import BuildError

if TYPE_CHECKING:
    from torch import nn

#: Module-path words that mark a non-language stack (never pruned unless a spec asks).
_NON_TEXT_WORDS = ("vision", "visual", "image", "audio", "encoder", "merger", "projector", "patch")
#: Attributes a layer may carry with its own index, for models not in the table.
_FALLBACK_RENUMBER = ("layer_idx", "layer_index", "layer_id")


@dataclass(frozen=True)
class DecoderStack:
    """The language decoder's layer stack inside a loaded model.

    layers: the ModuleList of decoder layers; list index = 0-based prunec layer index.
    text_config: the config that owns the layer count for this stack.
    model_type: the top-level `config.model_type`.
    path: dotted attribute path of `layers` from the top-level model.
    entry: the architecture-table entry driving surgery; for a model type not in the table,
        one inferred by inspection (`known` is then False).
    known: True when `entry` comes from the table.
    """

    layers: nn.ModuleList
    text_config: Any
    model_type: str
    path: str
    entry: ArchEntry
    known: bool = True


def _text_config(config: Any, entry: ArchEntry | None) -> Any:
    if entry is not None and entry.text_config:
        sub = getattr(config, entry.text_config, None)
        if sub is not None:
            return sub
    return config.get_text_config(decoder=True)


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, mod in model.named_modules() if mod is target), None)


def _get_decoder(model: nn.Module) -> Any:
    get = getattr(model, "get_decoder", None)
    try:
        return get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None


def _from_table(model: nn.Module, entry: ArchEntry) -> str | None:
    from torch import nn

    try:
        layers = model.get_submodule(entry.decoder_path)
    except AttributeError:
        layers = None
    if isinstance(layers, nn.ModuleList):
        return entry.decoder_path
    # A different head class (e.g. the bare *Model) shifts the path; ask transformers.
    layers = getattr(_get_decoder(model), "layers", None)
    return _path_of(model, layers) if isinstance(layers, nn.ModuleList) else None


def _repeated_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of two or more blocks of one class, outside vision/audio towers."""
    from torch import nn

    found = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        if len({type(child) for child in mod}) != 1:
            continue
        if any(word in name.lower() for word in _NON_TEXT_WORDS):
            continue
        found.append((name, mod))
    return found


def _infer(model: nn.Module, model_type: str) -> tuple[str, ArchEntry]:
    """Locate the decoder of a model type not in the table, or fail when unsure."""
    config: Any = model.config
    text_config = config.get_text_config(decoder=True)
    expected = getattr(text_config, "num_hidden_layers", None)
    candidates = _repeated_stacks(model)
    if isinstance(expected, int):
        candidates = [(n, m) for n, m in candidates if len(m) == expected]
    preferred = getattr(_get_decoder(model), "layers", None)
    chosen = [(n, m) for n, m in candidates if m is preferred] or candidates
    if len(chosen) != 1:
        listing = ", ".join(f"`{n}` ({len(m)} x {type(m[0]).__name__})" for n, m in candidates)
        reason = f"candidates: {listing}" if candidates else "no repeated block stack found"
        raise BuildError(
            f"cannot tell which layer stack is the language decoder of model type "
            f"`{model_type}` ({reason}); add an entry for it under prunec/arch/data/"
        )
    path, layers = chosen[0]
    lists = tuple(
        k for k, v in text_config.to_dict().items() if isinstance(v, list) and len(v) == len(layers)
    )
    recompute: dict[str, Any] = (
        {"max_window_layers": "count_kept_below"}
        if hasattr(text_config, "max_window_layers")
        else {}
    )
    entry = ArchEntry(
        model_type=model_type,
        decoder_path=path,
        text_config="text_config" if text_config is not config else "",
        layer_lists=lists,
        recompute=recompute,
        renumber=_FALLBACK_RENUMBER,
        tensor_templates=(f"{path}.${{layer_index}}.",),
        notes="inferred by inspection (not in the architecture table)",
    )
    return path, entry


def locate_decoder(model: nn.Module) -> DecoderStack:
    """Find the language decoder's layer stack of a transformers model.

    Uses the architecture table for known model types; otherwise picks the text model's
    ModuleList of repeated blocks and raises BuildError when that is ambiguous.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise BuildError(f"{type(model).__name__} has no `config`; not a transformers model")
    model_type = str(getattr(config, "model_type", "") or type(model).__name__)
    entry = arch_entry(model_type)
    path = _from_table(model, entry) if entry is not None else None
    known = path is not None
    if entry is None or path is None:
        path, entry = _infer(model, model_type)
    return DecoderStack(
        layers=model.get_submodule(path),  # type: ignore[arg-type]
        text_config=_text_config(config, entry),
        model_type=model_type,
        path=path,
        entry=entry,
        known=known,
    )
