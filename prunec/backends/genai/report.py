"""What a `genai` emission produced and how closely it reproduces transformers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenaiReport:
    """Result of `emit_genai`.

    files: every file of the folder, relative to it.
    genai_type: `model.type` in genai_config.json (what onnxruntime-genai runs it as).
    precision / execution: the target's options.
    checked_on: the execution provider the self-check ran on ("cpu" for a CUDA folder on a
        machine without CUDA: same graphs, onnxruntime's CPU kernels).
    tokenizer_prompts: texts encoded by both tokenizers, all to the same ids (else the build
        fails); image prompts count their expanded image tokens too.
    agreement: fraction of transformers' greedy tokens that onnxruntime-genai chose too, fed
        the same prefix (teacher-forced), over `tokens` tokens from `prompts` prompts; for
        fp32 it is 1.0 or the build fails, otherwise at least `threshold`.
    image_prompts: how many of those prompts carried an image (VLMs).
    max_abs_logit_diff: largest |logit| difference at the first generated position, over the
        prompts (the precision's rounding shows here before it flips any token).
    chat_template_parity: onnxruntime-genai renders the chat template like transformers
        (None: the tokenizer has none). Reported, not enforced: callers may render it
        themselves.
    seconds / builder_seconds: wall time of the emission, and of the model builder within it.
    notes: what the user should know (e.g. a check that could not run).
    """

    files: tuple[str, ...]
    genai_type: str
    precision: str
    execution: str
    checked_on: str
    tokenizer_prompts: int
    agreement: float
    threshold: float
    tokens: int
    prompts: int
    image_prompts: int = 0
    max_abs_logit_diff: float = 0.0
    chat_template_parity: bool | None = None
    seconds: float = 0.0
    builder_seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for the build log."""
        images = f", {self.image_prompts} with an image" if self.image_prompts else ""
        line = (
            f"{self.genai_type} {self.precision}/{self.execution}: greedy {self.agreement:.0%} "
            f"of {self.tokens} tokens over {_count(self.prompts, 'prompt')}{images} "
            f"(needs {self.threshold:.0%}, checked on {self.checked_on}), "
            f"|Δlogit| {self.max_abs_logit_diff:.1e}, tokenizer parity on "
            f"{_count(self.tokenizer_prompts, 'text')}"
        )
        if self.chat_template_parity is False:
            line += ", chat template renders differently"
        for note in self.notes:
            line += f"; {note}"
        return f"{line}, {self.seconds:.1f}s"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
