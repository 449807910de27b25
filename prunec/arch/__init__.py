"""Architecture knowledge and layer surgery: where the decoder layers live and how to cut them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class DecoderStack:
    """The language decoder's layer stack inside a loaded model.

    layers: the ModuleList of decoder layers; list index = 0-based prunec layer index.
    text_config: the config that owns `num_hidden_layers` for this stack.
    model_type: the top-level `config.model_type`.
    path: dotted attribute path of `layers` from the top-level model.
    """

    layers: nn.ModuleList
    text_config: Any
    model_type: str
    path: str


def locate_decoder(model: nn.Module) -> DecoderStack:
    """Find the language decoder's layer stack of a transformers model."""
    decoder = model.get_decoder()  # type: ignore[operator]
    path = next(name for name, mod in model.named_modules() if mod is decoder.layers)
    return DecoderStack(
        layers=decoder.layers,
        text_config=model.config.get_text_config(decoder=True),  # type: ignore[union-attr,operator]
        model_type=str(model.config.model_type),  # type: ignore[union-attr,operator]
        path=path,
    )
