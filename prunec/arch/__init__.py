"""Architecture knowledge and layer surgery: where the decoder layers live and how to cut them.

Public API: `locate_decoder`, `DecoderStack`, `remove_layers`, `skip_layers`,
`validate_remove`, `arch_entry`, `known_model_types`, `ArchEntry`.
The per-model-type facts live as data in `prunec/arch/data/*.json`.
"""

from __future__ import annotations

from prunec.arch.locate import DecoderStack, locate_decoder
from prunec.arch.surgery import remove_layers, skip_layers, validate_remove
from prunec.arch.table import ArchEntry, arch_entry, known_model_types

__all__ = [
    "ArchEntry",
    "DecoderStack",
    "arch_entry",
    "known_model_types",
    "locate_decoder",
    "remove_layers",
    "skip_layers",
    "validate_remove",
]
