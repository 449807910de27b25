"""The testbed model's architecture: a tiny LLaVA (CLIP + Llama) or Idefics3 (SigLIP + Llama).

Both are the transformers classes hub checkpoints use (`LlavaForConditionalGeneration`,
`Idefics3ForConditionalGeneration`), only small enough to train on 2 CPU cores.
"""

from __future__ import annotations

from typing import Any

from prunec.testbed.processor import IDEFICS3_SCALE, patch_size
from prunec.testbed.synth import DEMO, TaskSet

#: The transformers class of each family.
MODEL_CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
}


def build_config(
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    num_layers: int = 16,
    hidden_size: int = 64,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    family: str = "llava",
    tasks: TaskSet = DEMO,
) -> Any:
    """The config of a `family` testbed for `tasks`; a Llama decoder of `num_layers` layers."""
    from transformers import LlamaConfig

    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    vision: dict[str, Any] = dict(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=tasks.image_size,
        patch_size=patch_size(family, tasks),
    )
    if family == "llava":
        from transformers import CLIPVisionConfig, LlavaConfig

        return LlavaConfig(
            vision_config=CLIPVisionConfig(**vision, projection_dim=vision_hidden_size),
            text_config=text,
            image_token_index=image_token_id,
            image_seq_length=tasks.grid**2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config=vision,
        text_config=text.to_dict(),
        image_token_id=image_token_id,
        scale_factor=IDEFICS3_SCALE,
        tie_word_embeddings=False,
    )
