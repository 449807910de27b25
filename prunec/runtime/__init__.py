"""Greedy generation with an exported ONNX artifact, in onnxruntime and numpy only (no torch).

Everything under `prunec.runtime` must import without torch or transformers: the artifact is
meant for machines that have only onnxruntime, `tokenizers`, jinja2, numpy and Pillow.
A test imports this path in a fresh interpreter and checks `sys.modules` for torch.
"""

from prunec.runtime.generate import GenerationResult, OnnxGenerator
from prunec.runtime.manifest import MANIFEST_FILE, GraphSpec, Manifest, TensorSpec

__all__ = [
    "MANIFEST_FILE",
    "GenerationResult",
    "GraphSpec",
    "Manifest",
    "OnnxGenerator",
    "TensorSpec",
]
