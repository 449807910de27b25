"""The testbed's offline word-level tokenizer, chat template and processors (LLaVA, Idefics3).

Both families make one image token per grid cell of the task set's images: LLaVA with one
CLIP patch per cell, Idefics3 with 2x2 SigLIP patches per cell merged by its pixel shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prunec.testbed.synth import DEMO, IMAGE_SIZE, TaskSet

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE)
#: The extra tokens Idefics3's processor wraps each image in (it looks them up by name).
IDEFICS3_TOKENS: tuple[str, ...] = (
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
)
#: The model families a testbed can be trained as.
FAMILIES: tuple[str, ...] = ("llava", "idefics3")
#: Idefics3's pixel shuffle merges scale x scale patches into one token.
IDEFICS3_SCALE = 2
PATCH_SIZE = 16
#: The demo's image tokens: CLS is dropped by the "default" feature strategy, so one image =
#: (48/16)^2 = 9 tokens.
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2
#: Mean/std of 0.5 map pixels to [-1, 1]; `pixel_values` below mirrors the processor exactly.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)

#: Renders `user <image> question ? assistant answer </s>`. Content may be a string or a
#: list of {"type": "image"} / {"type": "text", "text": ...} parts, as in hub templates.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}user "
    "{% if message['content'] is string %}{{ message['content'] }} "
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }} {% endif %}"
    "{% endfor %}{% endif %}"
    "{% else %}assistant "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    " {{ eos_token }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}"
)


def patch_size(family: str, tasks: TaskSet) -> int:
    """The vision tower's patch side in pixels: one cell (LLaVA) or half a cell (Idefics3)."""
    _check_family(family)
    return tasks.cell if family == "llava" else tasks.cell // IDEFICS3_SCALE


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown testbed family {family!r}; expected one of {FAMILIES}")


def build_tokenizer(words: Sequence[str] = DEMO.words, extra: Sequence[str] = ()) -> Any:
    """A PreTrainedTokenizerFast over a WordLevel vocabulary (special tokens first).

    extra: more special tokens (a family's image wrappers), placed after SPECIAL_TOKENS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *extra, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=64,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE, *extra]})
    return tokenizer


def build_processor(family: str = "llava", tasks: TaskSet = DEMO) -> Any:
    """The processor of a `family` testbed for `tasks`: PIL image processor (no torchvision),
    word tokenizer over the task set's vocabulary, chat template. Saved next to the model, it
    loads with `AutoProcessor` like a hub checkpoint's."""
    _check_family(family)
    size = tasks.image_size
    if family == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        clip = CLIPImageProcessorPil(
            size={"height": size, "width": size},
            crop_size={"height": size, "width": size},
            do_center_crop=False,
            image_mean=list(PIXEL_MEAN),
            image_std=list(PIXEL_STD),
        )
        return LlavaProcessor(
            image_processor=clip,
            tokenizer=build_tokenizer(tasks.words),
            patch_size=patch_size(family, tasks),
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
            image_token=IMAGE,
        )
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    idefics = Idefics3ImageProcessorPil(
        size={"longest_edge": size},
        max_image_size={"longest_edge": size},
        do_image_splitting=False,
        image_mean=list(PIXEL_MEAN),
        image_std=list(PIXEL_STD),
    )
    return Idefics3Processor(
        image_processor=idefics,
        tokenizer=build_tokenizer(tasks.words, IDEFICS3_TOKENS),
        image_seq_len=tasks.grid**2,
        chat_template=CHAT_TEMPLATE,
    )


def image_inputs(family: str, images: Sequence[Any]) -> dict[str, Any]:
    """What the family's image processor makes of same-size RGB `images`, vectorised.

    The processors only rescale to [0, 1] and normalise here (the images already have the
    processor's size), so this mirrors them exactly (a test compares) at a fraction of the
    cost, which matters at every training step.
    """
    import numpy as np
    import torch

    _check_family(family)
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    arr = (arr - np.array(PIXEL_MEAN, dtype=np.float32)) / np.array(PIXEL_STD, dtype=np.float32)
    pixels = torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())
    if family == "llava":
        return {"pixel_values": pixels}
    # Idefics3 batches a list of images per sample (one here) and masks its padding (none).
    batch, _, height, width = pixels.shape
    return {
        "pixel_values": pixels[:, None],
        "pixel_attention_mask": torch.ones((batch, 1, height, width), dtype=torch.long),
    }
