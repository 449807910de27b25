"""The `genai` folder's self-check: onnxruntime-genai against transformers on the pruned model.

1. The folder loads in `og.Model` (on CPU when it was built for CUDA and no CUDA is here).
2. Tokenizer parity: onnxruntime-genai's tokenizer encodes every checked text to the ids the
   Hugging Face tokenizer gives, and decodes ids to the same text.
3. Greedy tokens: transformers generates greedily from each prompt on the pruned model; the
   folder is fed the same prefix token by token (teacher forcing) and its argmax compared at
   every step. With fp32 every token must agree, i.e. free-running greedy decoding gives
   transformers' tokens; fp16 and int4 must reach the target's `agreement`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunec.errors import BuildError

#: Tokens generated per prompt.
GREEDY_TOKENS = 16
#: Calibration prompts longer than this are cut (the check is about the folder, not the data).
MAX_PROMPT_TOKENS = 128
PROMPT_TEXT = "Describe the picture in one word."


@dataclass(frozen=True)
class Prompt:
    """One prompt both runtimes start from.

    ids: the token ids transformers starts from (image prompts: placeholders expanded).
    text: the text the tokenizers were compared on (None: ids from data, compared as ids).
    hf_inputs: extra transformers inputs (pixel values, image grid, M-RoPE token types).
    og_text / image: for image prompts, what onnxruntime-genai's multimodal processor gets
        (the prompt with one placeholder, which it expands itself, and the PNG bytes); its
        token ids must be `ids`.
    """

    ids: tuple[int, ...]
    text: str | None = None
    hf_inputs: Mapping[str, Any] = field(default_factory=dict)
    og_text: str | None = None
    image: bytes | None = None

    @property
    def has_image(self) -> bool:
        return self.image is not None


@dataclass(frozen=True)
class CheckResult:
    """What the self-check measured (see GenaiReport for the meaning of each field)."""

    checked_on: str
    agreement: float
    tokens: int
    max_abs_logit_diff: float
    tokenizer_prompts: int
    chat_template_parity: bool | None


def load_model(folder: Path, execution: str) -> tuple[Any, str]:
    """`og.Model` of the folder and the provider it runs on."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    # like `prunec run`: threads that wait instead of spinning leave the cores to the
    # reference model (and to whatever else runs on a small build machine)
    quiet = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": quiet}}}))
    checked_on = execution
    if execution == "cuda" and not og.is_cuda_available():
        config.clear_providers()  # same graphs, onnxruntime's CPU kernels
        checked_on = "cpu"
    try:
        return og.Model(config), checked_on
    except Exception as err:
        raise BuildError(f"onnxruntime-genai cannot load the built folder: {err}") from err


def text_prompts(tokenizer: Any, samples: Sequence[Mapping[str, Any]]) -> list[Prompt]:
    """The chat-rendered and the plain default prompt, plus up to two calibration samples."""
    texts = [PROMPT_TEXT]
    rendered = render_chat(tokenizer, PROMPT_TEXT)
    if rendered is not None:
        texts.insert(0, rendered)
    prompts = [Prompt(tuple(tokenizer(t)["input_ids"]), t) for t in texts]
    for sample in samples:
        if "pixel_values" in sample or len(prompts) >= len(texts) + 2:
            continue
        ids = np.asarray(sample["input_ids"])[0]
        mask = sample.get("attention_mask")
        if mask is not None:
            ids = ids[np.asarray(mask)[0].astype(bool)]
        ids = ids[:MAX_PROMPT_TOKENS]
        prompts.append(Prompt(tuple(int(i) for i in ids), tokenizer.decode(ids)))
    return prompts


def render_chat(tokenizer: Any, text: str) -> str | None:
    """`text` as one user turn of the tokenizer's chat template (None without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        )
    except Exception:  # templates that only take structured content: the plain prompt stays
        return None


def hf_greedy(model: Any, prompt: Prompt, tokens: int) -> list[int]:
    """transformers' greedy continuation of the prompt on the pruned model (no EOS stop)."""
    import torch
    from transformers import GenerationConfig

    ids = torch.tensor([list(prompt.ids)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **prompt.hf_inputs}
    # Plain greedy decoding, nothing of the model's own generation config (repetition
    # penalties, suppressed tokens, which generate() merges into any config it is given):
    # the config is swapped for the call. eos_token_id=[] never stops early, so every prompt
    # compares `tokens` positions (None would fall back to the model's EOS).
    saved = model.generation_config
    model.generation_config = GenerationConfig(
        max_new_tokens=tokens, do_sample=False, num_beams=1, eos_token_id=[], pad_token_id=0
    )
    try:
        with torch.no_grad():
            out = model.generate(**inputs)
    finally:
        model.generation_config = saved
    return [int(t) for t in out[0, ids.shape[1] :]]


def og_teacher_forced(
    og_model: Any, prompt: Prompt, reference: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """onnxruntime-genai fed the prompt, then `reference` token by token: its logits at the
    last prompt position, and its argmax at every step."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(prompt.ids) + len(reference) + 1, do_sample=False)
    generator = og.Generator(og_model, params)
    if prompt.image is not None:
        processor = og_model.create_multimodal_processor()
        inputs = processor(prompt.og_text, images=og.Images.open_bytes(prompt.image))
        theirs = [int(i) for i in inputs["input_ids"].as_numpy().reshape(-1)]
        if theirs != list(prompt.ids):
            raise BuildError(
                "image prompt parity failed: onnxruntime-genai's processor gives ids "
                f"{_shorten(theirs)}, transformers {_shorten(list(prompt.ids))}"
            )
        generator.set_inputs(inputs)
    else:
        generator.append_tokens(list(prompt.ids))
    # get_logits runs what is pending (the prompt, then each appended token) and returns the
    # logits of the last position, before any token is chosen
    first = _last_logits(generator)
    chosen = [int(np.argmax(first))]
    for token in reference[:-1]:
        generator.append_tokens([int(token)])
        chosen.append(int(np.argmax(_last_logits(generator))))
    return first, chosen


def _last_logits(generator: Any) -> np.ndarray:
    logits = np.asarray(generator.get_logits(), dtype=np.float32)
    return logits.reshape(-1, logits.shape[-1])[-1]


def _first_logits(model: Any, prompt: Prompt) -> np.ndarray:
    import torch

    ids = torch.tensor([list(prompt.ids)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **prompt.hf_inputs}
    with torch.no_grad():
        return model(**inputs).logits[0, -1].float().numpy()  # type: ignore[no-any-return]


def check_tokenizer(og_model: Any, tokenizer: Any, prompts: Sequence[Prompt]) -> int:
    """Encode every prompt text and decode every prompt's ids with both tokenizers."""
    import onnxruntime_genai as og

    try:
        og_tokenizer = og.Tokenizer(og_model)
    except Exception as err:
        raise BuildError(f"onnxruntime-genai cannot read the tokenizer: {err}") from err
    checked = 0
    for prompt in prompts:
        if prompt.text is not None and not prompt.has_image:
            theirs = [int(i) for i in og_tokenizer.encode(prompt.text)]
            ours = [int(i) for i in tokenizer(prompt.text)["input_ids"]]
            if theirs != ours:
                raise BuildError(
                    "tokenizer parity failed: onnxruntime-genai encodes "
                    f"{_shorten(prompt.text)!r} to {_shorten(theirs)}, transformers to "
                    f"{_shorten(ours)}"
                )
            checked += 1
        theirs_text = og_tokenizer.decode(np.asarray(prompt.ids, dtype=np.int32))
        ours_text = tokenizer.decode(list(prompt.ids), skip_special_tokens=True)
        if theirs_text != ours_text:
            raise BuildError(
                f"tokenizer parity failed: onnxruntime-genai decodes {_shorten(list(prompt.ids))} "
                f"to {_shorten(theirs_text)!r}, transformers to {_shorten(ours_text)!r}"
            )
    return checked


def chat_template_parity(og_model: Any, tokenizer: Any) -> bool | None:
    """Whether onnxruntime-genai renders a one-turn chat like transformers (None: no template)."""
    import onnxruntime_genai as og

    ours = render_chat(tokenizer, PROMPT_TEXT)
    if ours is None:
        return None
    messages = json.dumps([{"role": "user", "content": PROMPT_TEXT}])
    try:
        theirs = og.Tokenizer(og_model).apply_chat_template(messages, add_generation_prompt=True)
    except Exception:
        return False
    return bool(theirs == ours)


def self_check(
    folder: Path,
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    execution: str,
    precision: str,
    threshold: float,
) -> CheckResult:
    """Run the checks of the module docstring; BuildError when one fails."""
    og_model, checked_on = load_model(folder, execution)
    tokenizer_prompts = check_tokenizer(og_model, tokenizer, prompts)
    agreed = total = 0
    worst = 0.0
    for number, prompt in enumerate(prompts):
        reference = hf_greedy(model, prompt, GREEDY_TOKENS)
        try:
            first, chosen = og_teacher_forced(og_model, prompt, reference)
        except RuntimeError as err:  # onnxruntime's own failures, e.g. a kernel's shape check
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BuildError(
                f"onnxruntime-genai failed running prompt {number + 1}: {_shorten(message, 300)}"
            ) from err
        expected = _first_logits(model, prompt)
        worst = max(worst, float(np.abs(first[: expected.shape[0]] - expected).max()))
        matches = np.asarray(reference) == np.asarray(chosen)
        agreed += int(matches.sum())
        total += len(reference)
        if precision == "fp32" and not matches.all():
            step = int(np.argmin(matches))
            raise BuildError(
                f"greedy tokens differ from transformers on prompt {number + 1} at step "
                f"{step + 1}: onnxruntime-genai chose {int(chosen[step])}, transformers "
                f"{reference[step]} (first-step |Δlogit| {worst:.3g}); nothing was published"
            )
    agreement = agreed / total if total else 1.0
    if precision != "fp32" and agreement < threshold:
        raise BuildError(
            f"{precision} folder reproduces {agreement:.0%} of transformers' greedy tokens "
            f"({agreed} of {total}), below the target's agreement {threshold:.0%}; "
            "nothing was published"
        )
    return CheckResult(
        checked_on=checked_on,
        agreement=agreement,
        tokens=total,
        max_abs_logit_diff=worst,
        tokenizer_prompts=tokenizer_prompts,
        chat_template_parity=chat_template_parity(og_model, tokenizer),
    )


def _shorten(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
