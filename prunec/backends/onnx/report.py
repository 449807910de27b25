"""What an ONNX emission produced and how closely it matches PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field

from prunec.runtime.manifest import GraphSpec


@dataclass(frozen=True)
class OnnxReport:
    """Result of `emit_onnx`.

    graphs: role ("embed_tokens", "vision_encoder", "decoder") -> file, inputs and outputs
        (file relative to the output directory).
    max_abs_diff: role -> largest |onnxruntime - PyTorch| over the parity samples, in float32
        before any quantization ("decoder" covers prefill and cached decode; compared on
        non-padding positions only).
    tolerance: the bound every max_abs_diff stayed within (the build fails otherwise).
    greedy_token_agreement: fraction of PyTorch's greedy tokens (generate, do_sample=False)
        that the onnxruntime runner reproduced, position by position, on the first sample;
        measured on the published graphs (int8 ones when quantized).
    int8_logit_max_abs_diff / int8_top1_agreement: for `quantize int8`, how far the int8
        decoder's logits are from PyTorch's and how often their argmax agrees (None otherwise).
    image_preprocess_max_abs_diff: VLMs: largest |runner - image processor| pixel value on
        a non-square test image (the runner's numpy/Pillow preprocessing; the build fails
        beyond `prunec.backends.onnx.vision.PREPROCESS_TOLERANCE`). None for text models.
    seconds: wall time of the whole emission (export, checks, parity, quantization).
    notes: what the checks could not cover (e.g. calibration images of another size).
    """

    graphs: dict[str, GraphSpec]
    max_abs_diff: dict[str, float]
    tolerance: float
    greedy_token_agreement: float
    int8_logit_max_abs_diff: float | None = None
    int8_top1_agreement: float | None = None
    image_preprocess_max_abs_diff: float | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for the build log: parity per graph, greedy agreement, int8, time."""
        diffs = ", ".join(f"{role} {diff:.1e}" for role, diff in self.max_abs_diff.items())
        line = (
            f"max |Δ| {diffs} (tol {self.tolerance:.1e}); greedy {self.greedy_token_agreement:.0%}"
        )
        if self.int8_logit_max_abs_diff is not None:
            line += f"; int8 |Δlogit| {self.int8_logit_max_abs_diff:.3f}"
        if self.int8_top1_agreement is not None:
            line += f", top-1 {self.int8_top1_agreement:.0%}"
        if self.image_preprocess_max_abs_diff is not None:
            line += f"; image preprocessing |Δ| {self.image_preprocess_max_abs_diff:.1e}"
        notes = "".join(f"; note: {note}" for note in self.notes)
        return f"{line}, {self.seconds:.1f}s{notes}"
