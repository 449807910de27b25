"""The testbed model's architecture: a tiny LLaVA (CLIP vision tower + Llama decoder)."""

from __future__ import annotations

from typing import Any

from prunec.testbed.processor import IMAGE_SEQ_LENGTH, PATCH_SIZE
from prunec.testbed.synth import IMAGE_SIZE


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
) -> Any:
    """A LlavaConfig for the testbed; every size is small enough to train on 2 CPU cores."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=vision_hidden_size,
    )
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
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
