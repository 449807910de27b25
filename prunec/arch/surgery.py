"""Layer surgery: remove decoder layers in place, or skip them temporarily, driven by the table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prunec.arch.locate import DecoderStack, locate_decoder
from prunec.arch.table import deepstack_positions, layer_field_updates
from prunec.errors import BuildError

if TYPE_CHECKING:
    from torch import nn


def validate_remove(remove: Sequence[int], num_layers: int) -> list[int]:
    """Sorted unique layers to remove; BuildError when an index is bad or nothing is kept."""
    bad = [i for i in remove if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise BuildError(f"layer indices must be integers, got {bad!r}")
    out_of_range = sorted({i for i in remove if not 0 <= i < num_layers})
    if out_of_range:
        raise BuildError(
            f"cannot remove layer(s) {out_of_range}: the decoder has {num_layers} layers "
            f"(valid indices are 0..{num_layers - 1})"
        )
    dupes = sorted({i for i in remove if list(remove).count(i) > 1})
    if dupes:
        raise BuildError(f"layer(s) {dupes} listed more than once in `remove`")
    if len(set(remove)) >= num_layers:
        raise BuildError(f"cannot remove all {num_layers} decoder layers; keep at least one")
    return sorted(set(remove))


class _Undo:
    """A log of every attribute the surgery changed, so `skip_layers` can put it back."""

    def __init__(self) -> None:
        self._log: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        self._log.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, name, old in reversed(self._log):
            setattr(obj, name, old)
        self._log.clear()


def _parent_and_name(model: nn.Module, path: str) -> tuple[Any, str]:
    head, _, name = path.rpartition(".")
    return (model.get_submodule(head) if head else model), name


def _text_configs(model: nn.Module, stack: DecoderStack) -> list[Any]:
    """Every distinct config object describing the decoder (top-level text config and the
    decoder module's own, which are usually but not always the same object)."""
    configs = [stack.text_config]
    decoder, _ = _parent_and_name(model, stack.path)
    own = getattr(decoder, "config", None)
    if own is not None and all(own is not c for c in configs):
        configs.append(own)
    return configs


def _patch_configs(model: nn.Module, stack: DecoderStack, keep: list[int], undo: _Undo) -> None:
    n = len(stack.layers)
    for config in _text_configs(model, stack):
        updates = layer_field_updates(config.to_dict(), stack.entry, keep, n)
        for key, value in updates.items():
            if hasattr(config, key):
                undo.set(config, key, value)


def _renumber(stack: DecoderStack, keep: list[int], undo: _Undo) -> None:
    # Attention modules index the KV cache by their own layer_idx; stale values raise
    # IndexError in `generate` (or silently share cache slots).
    names = stack.entry.renumber
    for new, old in enumerate(keep):
        for module in stack.layers[old].modules():
            for name in names:
                if isinstance(getattr(module, name, None), int):
                    undo.set(module, name, new)


def _patch_deepstack(model: nn.Module, stack: DecoderStack, keep: list[int], undo: _Undo) -> None:
    ds = stack.entry.deepstack
    if ds is None:
        return
    from torch import nn

    vision_config = getattr(model.config, ds.vision_config)
    indexes = list(getattr(vision_config, ds.indexes_key))
    positions = deepstack_positions(len(indexes), keep)
    new_indexes = [indexes[j] for j in positions]
    undo.set(vision_config, ds.indexes_key, new_indexes)
    owner, attr = _parent_and_name(model, ds.indexes_attr)
    undo.set(owner, attr, new_indexes)
    own_config = getattr(owner, "config", None)
    if own_config is not None and own_config is not vision_config:
        undo.set(own_config, ds.indexes_key, new_indexes)
    parent, name = _parent_and_name(model, ds.merger_path)
    mergers = getattr(parent, name)
    undo.set(parent, name, nn.ModuleList([mergers[j] for j in positions]))


def _apply(model: nn.Module, remove: Sequence[int]) -> tuple[dict[int, int], _Undo]:
    from torch import nn

    stack = locate_decoder(model)
    removed = validate_remove(remove, len(stack.layers))
    keep = [i for i in range(len(stack.layers)) if i not in set(removed)]
    undo = _Undo()
    try:
        _renumber(stack, keep, undo)
        _patch_configs(model, stack, keep, undo)
        _patch_deepstack(model, stack, keep, undo)
        parent, name = _parent_and_name(model, stack.path)
        undo.set(parent, name, nn.ModuleList([stack.layers[i] for i in keep]))
    except BaseException:
        undo.restore()
        raise
    return {old: new for new, old in enumerate(keep)}, undo


def remove_layers(model: nn.Module, remove: Sequence[int]) -> dict[int, int]:
    """Remove decoder layers `remove` (0-based) from `model` in place; complete surgery.

    Changes the layer ModuleList, the text config's layer count, per-layer config lists
    (sliced, never regenerated), recomputed fields (Qwen2's `max_window_layers`), every
    submodule's own `layer_idx`, and position-dependent features (Qwen3-VL deepstack).
    Returns the layer map old index -> new index for the kept layers.
    Raises BuildError for out-of-range or duplicate indices, or when nothing would remain.
    """
    layer_map, _ = _apply(model, remove)
    return layer_map


@contextmanager
def skip_layers(model: nn.Module, remove: Sequence[int]) -> Iterator[dict[int, int]]:
    """Temporarily run `model` without layers `remove`; yields the layer map.

    Within the block the model is exactly what `remove_layers` would make it; on exit
    every changed attribute (layers, configs, layer_idx, deepstack) is restored.
    """
    layer_map, undo = _apply(model, remove)
    try:
        yield layer_map
    finally:
        undo.restore()
