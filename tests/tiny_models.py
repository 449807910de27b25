"""Tiny real Hugging Face models built offline from configs, with working processors.

`build_tiny(model_type, out_dir)` writes a randomly initialised model (safetensors) plus an
offline tokenizer (a `tokenizers` WordLevel model whose image tokens sit at the ids the model
config expects, with a chat template; `tokenizer="bpe"` trains a byte-level BPE instead, which
onnxruntime-genai's tokenizer can read) and, for VLMs, the model's image processor, so that
`AutoProcessor.from_pretrained(out_dir)` (VLMs) or `AutoTokenizer.from_pretrained(out_dir)`
(text models) works with no hub access. `sample_inputs` gives valid forward inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Word-level vocabulary: specials first (fixed ids), then image tokens, then plain words.
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = [
    "user",
    "assistant",
    "system",
    "what",
    "is",
    "the",
    "a",
    "in",
    "this",
    "image",
    "picture",
    "how",
    "many",
    "dots",
    "are",
    "there",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "two",
    "plus",
    "three",
    "equals",
    "five",
    "?",
    ".",
    ":",
    "\n",
    *[str(d) for d in range(10)],
    *[f"w{i}" for i in range(60)],
]
VOCAB_SIZE = 160  # >= specials + image tokens + words; embeddings are sized by this

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ IMAGE }} {% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)

TEXT_KW: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)


@dataclass(frozen=True)
class TinySpec:
    """How to build one tiny model type.

    config: builds the top-level config for `num_layers` decoder layers.
    model_class: transformers class name used to instantiate it.
    image_tokens: extra special tokens (in order) placed right after SPECIALS.
    image_placeholder: the text the chat template writes for an image (None = text model).
    image_processor: (class name, kwargs) of the image processor, or None.
    processor: (class name, kwargs) of the processor, or None (text models use the tokenizer).
    image_size: the sample image's side in pixels, or its (height, width).
    dense_init: re-draw the parameters the HF initialiser leaves at zero (Gemma 3's
        multimodal projection is one: its image features would all be 0, and a parity check
        against 0 cannot fail).
    """

    config: Callable[[int], Any]
    model_class: str
    image_tokens: tuple[str, ...] = ()
    image_placeholder: str | None = None
    image_processor: tuple[str, dict[str, Any]] | None = None
    processor: tuple[str, dict[str, Any]] | None = None
    image_size: int | tuple[int, int] = 32
    extra_tokenizer: dict[str, Any] = field(default_factory=dict)
    dense_init: bool = False


def _tid(spec: TinySpec, token: str) -> int:
    return len(SPECIALS) + spec.image_tokens.index(token)


def _text(model_type: str, num_layers: int, **kw: Any) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, num_hidden_layers=num_layers, **{**TEXT_KW, **kw})


def _clip_vision(image_size: int = 32, patch: int = 8) -> dict[str, Any]:
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _siglip_vision(image_size: int = 32, patch: int = 8) -> dict[str, Any]:
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )


# --- per-type configs ----------------------------------------------------------------------


def _llava(n: int) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=_clip_vision(),
        text_config=_text("llama", n).to_dict(),
        image_token_index=4,
        image_seq_length=16,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )


def _llava_next(n: int) -> Any:
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=_text("llama", n).to_dict(),
        image_token_index=4,
        image_grid_pinpoints=[[32, 32]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=16,
    )


_QWEN_VISION = dict(
    depth=2,
    embed_dim=32,
    hidden_size=64,
    num_heads=2,
    mlp_ratio=2,
    patch_size=8,
    spatial_merge_size=2,
    temporal_patch_size=2,
)


def _qwen2_vl_text(n: int) -> dict[str, Any]:
    """The text config Qwen2-VL and Qwen2.5-VL share: M-RoPE over 3 sections."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return {**TEXT_KW, "num_hidden_layers": n, "max_window_layers": n - 2, "rope_parameters": rope}


def _qwen2_vl(n: int) -> Any:
    from transformers import Qwen2VLConfig

    text = _qwen2_vl_text(n)
    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(_QWEN_VISION),
        image_token_id=6,
        video_token_id=7,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )


def _qwen2_5_vl(n: int) -> Any:
    from transformers import Qwen2_5_VLConfig

    text = _qwen2_vl_text(n)
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=8,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=16,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=6,
        video_token_id=7,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )


def _qwen3_vl(n: int) -> Any:
    from transformers import Qwen3VLConfig

    text = {**TEXT_KW, "num_hidden_layers": n, "head_dim": 16}
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=8,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1, 2],
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=6,
        video_token_id=7,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )


def _idefics3(n: int) -> Any:
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=_text("llama", n).to_dict(),
        image_token_id=4,
        scale_factor=2,
        pad_token_id=0,
    )


def _paligemma(n: int) -> Any:
    from transformers import PaliGemmaConfig

    text = _text("gemma", n, head_dim=16, num_key_value_heads=1).to_dict()
    return PaliGemmaConfig(
        vision_config={**_siglip_vision(), "projection_dim": 64},
        text_config=text,
        image_token_index=4,
        projection_dim=64,
    )


def _gemma3(n: int) -> Any:
    from transformers import Gemma3Config

    text = _text(
        "gemma3_text", n, head_dim=16, sliding_window=8, sliding_window_pattern=2
    ).to_dict()
    text.pop("layer_types", None)
    text["layer_types"] = [
        "full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n)
    ]
    return Gemma3Config(
        vision_config=_siglip_vision(),
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=4,
    )


def _mistral3(n: int) -> Any:
    from transformers import Mistral3Config

    return Mistral3Config(
        vision_config=dict(
            model_type="pixtral",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            head_dim=16,
        ),
        text_config=_text("mistral", n, head_dim=16).to_dict(),
        image_token_index=4,
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )


def _text_only(model_type: str, **kw: Any) -> Callable[[int], Any]:
    return lambda n: _text(model_type, n, **kw)


def _gemma2_text(n: int) -> Any:
    return _text(
        "gemma2",
        n,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
    )


def _qwen2_text(n: int) -> Any:
    return _text(
        "qwen2",
        n,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=n - 2,
    )


def _gemma3_text(n: int) -> Any:
    return _text(
        "gemma3_text",
        n,
        head_dim=16,
        sliding_window=8,
        layer_types=[
            "full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(n)
        ],
    )


_CLIP_PROC = (
    "CLIPImageProcessorPil",
    dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
)
_QWEN_PROC = (
    "Qwen2VLImageProcessorPil",
    dict(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=32 * 32),
)
#: Image tokens, prompt placeholder and processors shared by the Qwen-VL family.
_QWEN_VL: dict[str, Any] = dict(
    image_tokens=("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    image_placeholder="<|vision_start|> <|image_pad|> <|vision_end|>",
    image_processor=_QWEN_PROC,
    processor=None,
)

SPECS: dict[str, TinySpec] = {
    "llama": TinySpec(_text_only("llama"), "LlamaForCausalLM"),
    "mistral": TinySpec(_text_only("mistral", sliding_window=8), "MistralForCausalLM"),
    "qwen2": TinySpec(_qwen2_text, "Qwen2ForCausalLM"),
    "qwen3": TinySpec(_text_only("qwen3", head_dim=16), "Qwen3ForCausalLM"),
    # original == max positions: a 4k Phi-3 (a smaller original length means LongRoPE scaling)
    "phi3": TinySpec(_text_only("phi3", original_max_position_embeddings=512), "Phi3ForCausalLM"),
    "gemma2": TinySpec(_gemma2_text, "Gemma2ForCausalLM"),
    "gemma3_text": TinySpec(_gemma3_text, "Gemma3ForCausalLM"),
    "llava": TinySpec(
        _llava,
        "LlavaForConditionalGeneration",
        image_tokens=("<image>",),
        image_placeholder="<image>",
        image_processor=_CLIP_PROC,
        processor=(
            "LlavaProcessor",
            dict(
                patch_size=8, vision_feature_select_strategy="full", num_additional_image_tokens=1
            ),
        ),
    ),
    "llava_next": TinySpec(
        _llava_next,
        "LlavaNextForConditionalGeneration",
        image_tokens=("<image>",),
        image_placeholder="<image>",
        image_processor=(
            "LlavaNextImageProcessorPil",
            dict(
                size={"shortest_edge": 32},
                crop_size={"height": 32, "width": 32},
                image_grid_pinpoints=[[32, 32]],
            ),
        ),
        processor=(
            "LlavaNextProcessor",
            dict(
                patch_size=8,
                vision_feature_select_strategy="default",
                num_additional_image_tokens=1,
            ),
        ),
    ),
    "qwen2_vl": TinySpec(
        _qwen2_vl,
        "Qwen2VLForConditionalGeneration",
        **_QWEN_VL,
    ),
    "qwen2_5_vl": TinySpec(
        _qwen2_5_vl,
        "Qwen2_5_VLForConditionalGeneration",
        **_QWEN_VL,
    ),
    "qwen3_vl": TinySpec(
        _qwen3_vl,
        "Qwen3VLForConditionalGeneration",
        **_QWEN_VL,
    ),
    "idefics3": TinySpec(
        _idefics3,
        "Idefics3ForConditionalGeneration",
        image_tokens=("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        image_placeholder="<image>",
        image_processor=(
            "Idefics3ImageProcessorPil",
            dict(
                size={"longest_edge": 32},
                max_image_size={"longest_edge": 32},
                do_image_splitting=False,
            ),
        ),
        processor=("Idefics3Processor", dict(image_seq_len=4)),
    ),
    "paligemma": TinySpec(
        _paligemma,
        "PaliGemmaForConditionalGeneration",
        image_tokens=("<image>",),
        image_placeholder="",
        image_processor=(
            "SiglipImageProcessorPil",
            dict(size={"height": 32, "width": 32}, image_seq_length=16),
        ),
        processor=("PaliGemmaProcessor", {}),
    ),
    "gemma3": TinySpec(
        _gemma3,
        "Gemma3ForConditionalGeneration",
        image_tokens=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
        image_placeholder="<start_of_image>",
        image_processor=(
            "Gemma3ImageProcessorPil",
            dict(size={"height": 32, "width": 32}),
        ),
        processor=("Gemma3Processor", dict(image_seq_length=4)),
        extra_tokenizer=dict(
            image_token="<image_soft_token>",
            boi_token="<start_of_image>",
            eoi_token="<end_of_image>",
        ),
    ),
    "mistral3": TinySpec(
        _mistral3,
        "Mistral3ForConditionalGeneration",
        image_tokens=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        image_placeholder="[IMG]",
        image_processor=(
            "PixtralImageProcessorPil",
            dict(size={"longest_edge": 32}, patch_size=8),
        ),
        processor=None,
    ),
}

#: Model types `build_tiny` supports (text models first).
TINY_TYPES: tuple[str, ...] = tuple(SPECS)
#: The subset that are vision-language models.
VLM_TYPES: tuple[str, ...] = tuple(t for t, s in SPECS.items() if s.image_placeholder is not None)


def _word_level(spec: TinySpec) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = [*SPECIALS, *spec.image_tokens, *WORDS]
    assert len(tokens) <= VOCAB_SIZE, "grow VOCAB_SIZE"
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return backend


def _byte_level_bpe(spec: TinySpec) -> Any:
    """A byte-level BPE (GPT-2 / Llama 3 / Qwen style) trained on WORDS, specials first.

    The alphabet is printable ASCII (the full 256 bytes would not fit in VOCAB_SIZE), so any
    ASCII text tokenizes; merges fill the rest of the vocabulary. Training is deterministic.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    ascii_chars = [c for c in byte_chars if c.isascii() and c.isprintable()] + ["Ċ", "Ġ"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[*SPECIALS, *spec.image_tokens],
        initial_alphabet=sorted(set(ascii_chars)),
        show_progress=False,
    )
    sentences = [" ".join(WORDS), "what is in this image ? two plus three equals five ."]
    backend.train_from_iterator(sentences * 4, trainer)
    assert backend.get_vocab_size() <= VOCAB_SIZE
    return backend


def _make_tokenizer(spec: TinySpec, kind: str = "wordlevel") -> Any:
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(spec) if kind == "bpe" else _word_level(spec)
    template = CHAT_TEMPLATE.replace("{{ IMAGE }}", spec.image_placeholder or "")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(spec.image_tokens),
        chat_template=template,
        **spec.extra_tokenizer,
    )
    tok.padding_side = "left"
    return tok


def _make_processor(spec: TinySpec, tokenizer: Any) -> list[Any]:
    """The objects to save next to the model: a processor, or tokenizer (+ image processor)."""
    import transformers

    if spec.image_processor is None:
        return [tokenizer]
    ip_name, ip_kw = spec.image_processor
    image_processor = getattr(transformers, ip_name)(**ip_kw)
    if spec.processor is None:
        # Qwen-VL processors insist on a video processor, which needs torchvision; the
        # tokenizer and image processor are saved side by side instead (see ShimProcessor).
        return [tokenizer, image_processor]
    proc_name, proc_kw = spec.processor
    template = tokenizer.chat_template
    processor = getattr(transformers, proc_name)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **proc_kw
    )
    return [processor]


#: The files a tokenizer saves (what `build_tiny(..., tokenizer=None)` leaves out).
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "chat_template*",
)


def build_tiny(
    model_type: str,
    out_dir: Path,
    *,
    num_layers: int = 6,
    seed: int = 0,
    spec: TinySpec | None = None,
    tokenizer: str | None = "wordlevel",
) -> Path:
    """Build a tiny random `model_type` model and save it with its processor to `out_dir`.

    spec: a variant of SPECS[model_type] (see `vision_variant`); the default spec otherwise.

    tokenizer: "wordlevel" (whitespace-split words) or "bpe" (byte-level BPE); None leaves out
    the tokenizer files, chat template included (image processor and processor configs stay),
    like a checkpoint saved without its tokenizer.
    """
    import torch
    import transformers

    spec = spec or SPECS[model_type]
    config = spec.config(num_layers)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).eval()
    if spec.dense_init:
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.5)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for part in _make_processor(spec, _make_tokenizer(spec, tokenizer or "wordlevel")):
        part.save_pretrained(out_dir)
    if tokenizer is None:
        for path in [p for pattern in TOKENIZER_FILES for p in out_dir.glob(pattern)]:
            path.unlink()
    (out_dir / "tiny_model.json").write_text(json.dumps({"model_type": model_type}))
    return out_dir


def to_bfloat16(source: Path, out_dir: Path) -> Path:
    """A copy of the checkpoint `source` with every floating tensor stored in bfloat16, the
    way most published checkpoints are (config `dtype` updated; other files copied)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in Path(source).iterdir():
        if path.suffix == ".safetensors":
            tensors = load_file(path)
            converted = {
                k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()
            }
            save_file(converted, out_dir / path.name, metadata={"format": "pt"})
        elif path.is_file() and path.name != "config.json":
            shutil.copy(path, out_dir / path.name)
    config = json.loads((Path(source) / "config.json").read_text())
    for section in (config, *(v for v in config.values() if isinstance(v, dict))):
        if "dtype" in section or section is config:
            section["dtype"] = "bfloat16"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def sample_image(size: int | tuple[int, int] = 32, seed: int = 0) -> Any:
    """A small deterministic RGB PIL image, `size` pixels square or (height, width)."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


def load_processor(model_type: str, path: Path) -> Any:
    """The processor `sample_inputs` expects for a model saved by `build_tiny`."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    spec = SPECS[model_type]
    if spec.image_processor is None:
        return AutoTokenizer.from_pretrained(path)
    if spec.processor is None:
        kind = "pixtral" if model_type == "mistral3" else "qwen"
        tok = AutoTokenizer.from_pretrained(path)
        return ShimProcessor(tok, AutoImageProcessor.from_pretrained(path), kind)
    return AutoProcessor.from_pretrained(path)


@dataclass(frozen=True)
class ShimProcessor:
    """Minimal processor for VLMs whose transformers processor needs torchvision.

    Qwen2VLProcessor insists on a torchvision video processor and PixtralProcessor (Mistral3)
    on torchvision itself; this expands the image placeholder the way they do.
    kind: "qwen" (`<|image_pad|>` x merged patches, plus `mm_token_type_ids` for M-RoPE) or
    "pixtral" (rows of `[IMG]` separated by `[IMG_BREAK]`, ending in `[IMG_END]`).
    """

    tokenizer: Any
    image_processor: Any
    kind: str

    def _expand(self, text: str, out: dict[str, Any]) -> str:
        if self.kind == "qwen":
            merge = int(self.image_processor.merge_size) ** 2
            count = int(out["image_grid_thw"][0].prod()) // merge
            return text.replace("<|image_pad|>", " ".join(["<|image_pad|>"] * count))
        size = self.image_processor.patch_size
        patch = int(size["height"] if isinstance(size, dict) else size) * 2  # merge size 2
        height, width = (int(v) for v in out["image_sizes"][0])
        rows = [["[IMG]"] * (width // patch) + ["[IMG_BREAK]"] for _ in range(height // patch)]
        rows[-1][-1] = "[IMG_END]"
        return text.replace("[IMG]", " ".join(t for row in rows for t in row), 1)

    def __call__(
        self,
        text: str,
        images: Any = None,
        return_tensors: str = "pt",
        images_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if images is not None:
            kwargs = images_kwargs or {}
            out = dict(self.image_processor(images=images, return_tensors=return_tensors, **kwargs))
            text = self._expand(text, out)
        out.update(self.tokenizer(text, return_tensors=return_tensors))
        if images is not None and self.kind == "qwen":
            # M-RoPE needs the modality of each token: 1 marks image tokens, 0 text.
            image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            out["mm_token_type_ids"] = (out["input_ids"] == image_id).long()
        return out

    def apply_chat_template(self, messages: Any, **kw: Any) -> str:
        return str(self.tokenizer.apply_chat_template(messages, **{**kw, "tokenize": False}))


def sample_inputs(
    model_type: str, processor: Any, with_image: bool = True, spec: TinySpec | None = None
) -> dict[str, Any]:
    """Valid forward inputs (a batch of one) for a tiny `model_type` model.

    `processor` is what `load_processor` (or prunec's `load_model`) returned for the model; for
    the Qwen-VL family a bare tokenizer is also accepted when `with_image` is False.
    spec: the variant the model was built from (its sample image size), if not the default.
    """
    spec = spec or SPECS[model_type]
    text = "what is in this image ? two plus three equals"
    is_vlm = spec.image_placeholder is not None
    if not (is_vlm and with_image):
        import torch

        tok = getattr(processor, "tokenizer", processor)
        # Ids straight from the vocabulary: AutoTokenizer swaps in Qwen2Tokenizer for qwen2
        # configs, which re-splits words; the vocabulary is the same for every class.
        ids = [tok.bos_token_id, *tok.convert_tokens_to_ids((text + " " + text).split())]
        input_ids = torch.tensor([ids])
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if model_type == "paligemma":  # PaliGemma always wants token_type_ids
            inputs["token_type_ids"] = inputs["input_ids"] * 0
        return inputs
    image = sample_image(spec.image_size)
    if model_type == "paligemma":
        inputs = dict(processor(text=text, images=image, return_tensors="pt"))
        inputs.pop("labels", None)  # only there for training; it would make forward compute a loss
        return inputs
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=prompt, images=image, return_tensors="pt"))


# --- vision geometry variants ----------------------------------------------------------------

#: The knobs `vision_variant` understands, per family (names as in the HF configs).
VISION_KNOBS: dict[str, tuple[str, ...]] = {
    "llava": (
        "image_size",
        "patch_size",
        "vision_feature_select_strategy",
        "vision_feature_layer",
    ),
    "idefics3": ("image_size", "patch_size", "scale_factor", "processor_image_size"),
    "gemma3": ("image_size", "patch_size", "mm_tokens_per_image"),
    "qwen2_vl": ("image_size", "patch_size", "spatial_merge_size", "temporal_patch_size"),
    "qwen2_5_vl": (
        "image_size",
        "patch_size",
        "spatial_merge_size",
        "temporal_patch_size",
        "window_size",
    ),
    "qwen3_vl": (
        "image_size",
        "patch_size",
        "spatial_merge_size",
        "temporal_patch_size",
        "num_position_embeddings",
    ),
}


def vision_variant(model_type: str, **knobs: Any) -> TinySpec:
    """SPECS[model_type] with another vision geometry; config and processor kept consistent.

    image_size: the vision tower's input side (Qwen-VL: the sample image's (height, width),
    multiples of patch_size * spatial_merge_size; the processor is pinned to that many
    pixels). Idefics3's `processor_image_size` lets the processor produce a smaller image
    than the tower's `image_size` (the tower then interpolates its position buckets).
    The other knobs are the HF config attributes of the same name.
    """
    from dataclasses import replace

    unknown = set(knobs) - set(VISION_KNOBS[model_type])
    if unknown:
        raise TypeError(f"{model_type} has no vision knob {sorted(unknown)}")
    base = SPECS[model_type]
    if model_type.startswith("qwen"):
        return _qwen_variant(base, model_type, knobs)
    size = int(knobs.get("image_size", 32))
    patch = int(knobs.get("patch_size", 8))
    vision = {"image_size": size, "patch_size": patch}
    top: dict[str, Any] = {}
    assert base.image_processor is not None and base.processor is not None
    ip_name, ip_kw = base.image_processor
    proc_name, proc_kw = base.processor
    if model_type == "llava":
        strategy = knobs.get("vision_feature_select_strategy", "full")
        top = {
            "vision_feature_select_strategy": strategy,
            "vision_feature_layer": knobs.get("vision_feature_layer", -1),
        }
        ip_kw = {**ip_kw, "size": {"shortest_edge": size}, "crop_size": _square(size)}
        proc_kw = {**proc_kw, "patch_size": patch, "vision_feature_select_strategy": strategy}
    elif model_type == "idefics3":
        scale = int(knobs.get("scale_factor", 2))
        shown = int(knobs.get("processor_image_size", size))
        top = {"scale_factor": scale}
        edge = {"longest_edge": shown}
        ip_kw = {**ip_kw, "size": edge, "max_image_size": edge}
        proc_kw = {**proc_kw, "image_seq_len": (shown // patch) ** 2 // scale**2}
        size = shown
    elif model_type == "gemma3":
        tokens = int(knobs.get("mm_tokens_per_image", 4))
        top = {"mm_tokens_per_image": tokens}
        ip_kw = {**ip_kw, "size": _square(size)}
        proc_kw = {**proc_kw, "image_seq_length": tokens}
    return replace(
        base,
        config=_reconfigured(base.config, vision, top),
        image_processor=(ip_name, ip_kw),
        processor=(proc_name, proc_kw),
        image_size=size,
        dense_init=True,
    )


def _square(size: int) -> dict[str, int]:
    return {"height": size, "width": size}


def _reconfigured(
    build: Callable[[int], Any], vision: dict[str, Any], top: dict[str, Any]
) -> Callable[[int], Any]:
    def config(n: int) -> Any:
        out = build(n)
        for key, value in vision.items():
            setattr(out.vision_config, key, value)
        for key, value in top.items():
            setattr(out, key, value)
        return out

    return config


def _qwen_variant(base: TinySpec, model_type: str, knobs: dict[str, Any]) -> TinySpec:
    from dataclasses import replace

    size = knobs.get("image_size", 32)
    height, width = (size, size) if isinstance(size, int) else size
    patch = int(knobs.get("patch_size", 8))
    merge = int(knobs.get("spatial_merge_size", 2))
    temporal = int(knobs.get("temporal_patch_size", 2))
    factor = patch * merge
    if height % factor or width % factor:
        raise ValueError(f"image {height}x{width} is not a multiple of {factor}")
    vision: dict[str, Any] = {
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": temporal,
    }
    for key in ("window_size", "num_position_embeddings"):
        if key in knobs:
            vision[key] = int(knobs[key])
    pixels = height * width
    ip_kw = dict(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=temporal,
        min_pixels=pixels,
        max_pixels=pixels,
    )
    assert base.image_processor is not None
    return replace(
        base,
        config=_reconfigured(base.config, vision, {}),
        image_processor=(base.image_processor[0], ip_kw),
        image_size=(height, width),
        dense_init=True,
    )
