"""The architecture table: per-model-type layer-surgery facts, read from `arch/data/*.json`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

DATA_DIR = Path(__file__).parent / "data"

#: Per-layer lists transformers validates against the layer count for every model type
#: (`PreTrainedConfig.validate_layer_type`); sliced whenever present with the full length.
COMMON_LAYER_LISTS: tuple[str, ...] = ("layer_types", "mlp_layer_types")

#: How a recomputed config field is derived. `count_kept_below`: the field is a layer-count
#: threshold (Qwen2's `max_window_layers`: layers below it use full attention); the new value
#: is the number of kept layers whose old index is below the old value.
Recompute = Literal["count_kept_below"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeepstackEntry(_Frozen):
    """Visual features injected into the first decoder layers (Qwen3-VL).

    Feature j (taken from vision layer `indexes[j]`) is added to decoder layer j's output.
    vision_config: attribute of the top config holding `indexes_key`.
    merger_path: module path of the per-feature merger ModuleList (sliced with the features).
    indexes_attr: module attribute caching the indexes list (updated with the config).
    tensor_templates: checkpoint names of the mergers, `${layer_index}` = feature position.
    """

    vision_config: str
    indexes_key: str
    merger_path: str
    indexes_attr: str
    tensor_templates: tuple[str, ...]


class ArchEntry(_Frozen):
    """What layer surgery must change for one `config.model_type`.

    decoder_path: dotted module path (from the *ForCausalLM / *ForConditionalGeneration
        model) of the decoder layers' ModuleList.
    text_config: attribute of the top config holding the decoder's config ("" = top config).
    num_layers_key: the text-config field holding the layer count.
    layer_lists: text-config fields with one entry per layer (sliced by the kept indices).
    recompute: text-config fields recomputed from the kept indices (see `Recompute`).
    renumber: integer attributes on any submodule of a layer that hold its own index.
    tensor_templates: checkpoint tensor-name prefixes of a layer, `${layer_index}` = index;
        several when transformers' saved names differ from module paths.
    deepstack: Qwen3-VL's position-dependent visual features; None elsewhere.
    residual_projection: module path, inside one decoder layer, of the linear layer whose
        output the layer adds to the residual stream unchanged (the MLP's down projection);
        training-free healing folds its correction into that layer's weight. None when the
        MLP's output is transformed before the addition (Gemma 2/3 normalise it), so a
        linear correction cannot be folded exactly: `heal` is refused (`residual_note` says
        why), and for model types missing from the table.
    residual_note: why `residual_projection` is None, for the refusal message.
    notes: what the surgery changes for this family, for humans.
    """

    model_type: str
    decoder_path: str
    text_config: str = ""
    num_layers_key: str = "num_hidden_layers"
    layer_lists: tuple[str, ...] = ()
    recompute: dict[str, Recompute] = {}
    renumber: tuple[str, ...] = ("layer_idx",)
    tensor_templates: tuple[str, ...] = ()
    deepstack: DeepstackEntry | None = None
    residual_projection: str | None = None
    residual_note: str = ""
    notes: str = ""

    def rename_tensor(
        self, name: str, layer_map: Mapping[int, int], deepstack_map: Mapping[int, int]
    ) -> str | None:
        """The checkpoint tensor `name` after surgery: renumbered, unchanged (not a layer
        tensor), or None when it belongs to a removed layer (or a dropped deepstack merger)."""
        groups = [(self.tensor_templates, layer_map)]
        if self.deepstack is not None:
            groups.append((self.deepstack.tensor_templates, deepstack_map))
        for templates, index_map in groups:
            for template in templates:
                match = _template_regex(template).fullmatch(name)
                if match is None:
                    continue
                new = index_map.get(int(match.group(2)))
                if new is None:
                    return None
                return f"{match.group(1)}{new}{match.group(3)}"
        return name


@cache
def _template_regex(template: str) -> re.Pattern[str]:
    head, _, tail = template.partition("${layer_index}")
    return re.compile("(" + re.escape(head) + r")(\d+)(" + re.escape(tail) + r".*)")


@cache
def _load_table() -> dict[str, ArchEntry]:
    table = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        entry = ArchEntry.model_validate(json.loads(path.read_text()))
        table[entry.model_type] = entry
    return table


def arch_entry(model_type: str) -> ArchEntry | None:
    """The table entry for `model_type`, or None when the type is not in the table."""
    return _load_table().get(model_type)


def known_model_types() -> tuple[str, ...]:
    """Every model type with a table entry, sorted."""
    return tuple(sorted(_load_table()))


def layer_field_updates(
    values: Mapping[str, Any],
    entry: ArchEntry,
    keep: Sequence[int],
    num_layers: int,
) -> dict[str, Any]:
    """New text-config values after keeping the layers `keep` (sorted old indices).

    `values` holds the current text-config fields (a config object's dict or config.json's
    text section). Shared by in-memory surgery and streaming emission so both write the
    same config. Lists whose length is not `num_layers` are left alone (absent = unused).
    """
    updates: dict[str, Any] = {entry.num_layers_key: len(keep)}
    for key in dict.fromkeys((*entry.layer_lists, *COMMON_LAYER_LISTS)):
        old = values.get(key)
        if isinstance(old, list | tuple) and len(old) == num_layers:
            updates[key] = [old[i] for i in keep]
    for key, rule in entry.recompute.items():
        old = values.get(key)
        if rule == "count_kept_below" and isinstance(old, int):
            updates[key] = sum(1 for i in keep if i < old)
    return updates


def heal_refusal(config: Mapping[str, Any]) -> str | None:
    """Why training-free healing cannot fold a correction exactly into the model described by
    `config` (config.json as a dict); None when it can.

    Both the model type and, for VLMs, the text decoder's own type (PaliGemma 2 wraps a
    Gemma 2 decoder) must have a table entry with a `residual_projection`.
    """
    model_type = str(config.get("model_type") or "")
    entry = arch_entry(model_type)
    if entry is None:
        return (
            f"model type `{model_type or '?'}` is not in the architecture table, so where its "
            "layers write into the residual stream is unknown"
        )
    if entry.residual_projection is None:
        return entry.residual_note or f"model type `{model_type}` has no foldable projection"
    text = config.get(entry.text_config) if entry.text_config else None
    text_type = str(text.get("model_type") or "") if isinstance(text, Mapping) else ""
    text_entry = arch_entry(text_type) if text_type and text_type != model_type else None
    if text_entry is not None and text_entry.residual_projection is None:
        note = text_entry.residual_note or "its decoder has no foldable projection"
        return f"its text decoder is `{text_type}`: {note}"
    return None


def deepstack_positions(num_features: int, keep: Sequence[int]) -> list[int]:
    """Deepstack features that survive: feature j lands on decoder layer j, so it survives
    exactly when layer j is kept, and then lands on that layer's new index (its rank here)."""
    kept = set(keep)
    return [j for j in range(num_features) if j in kept]
