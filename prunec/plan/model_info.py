"""What can be learnt about a model without loading it: the decoder layer count from config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunec.plan.model import ModelSpec

#: Config keys that hold the language decoder's settings in VLM configs, in lookup order.
_TEXT_CONFIG_KEYS = ("text_config", "language_config", "llm_config")


def read_layer_count(model: ModelSpec) -> int | None:
    """The decoder layer count of a local model directory, read from config.json.

    Reads plain JSON (no torch/transformers import, so `prunec check` stays fast). Looks for
    `num_hidden_layers` at the top level, then under `text_config` (VLMs). None when the
    model is a hub id, the directory or config is missing or unreadable, or no count is found.
    """
    if not model.local:
        return None
    config_path = Path(model.source) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _layer_count(config)


def _layer_count(config: Any) -> int | None:
    if not isinstance(config, dict):
        return None
    count = config.get("num_hidden_layers")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    for key in _TEXT_CONFIG_KEYS:
        nested = _layer_count(config.get(key))
        if nested is not None:
            return nested
    return None


def layer_count_of(config: Any) -> int | None:
    """The decoder layer count in a parsed config.json (top level or a VLM's text config)."""
    return _layer_count(config)
