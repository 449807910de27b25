"""Greedy decoding over the artifact's graphs with a numpy KV cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunec.runtime.manifest import Manifest
from prunec.runtime.positions import mrope_positions, positions_from_mask

__all__ = ["GenerationResult", "OnnxGenerator", "positions_from_mask"]
from prunec.runtime.session import make_session, run_graph


@dataclass(frozen=True)
class GenerationResult:
    """tokens: generated ids (eos included when emitted); prompt_ids: the full prompt fed.

    prefill_s / decode_s: wall time of the first decoder call and of all later steps.
    """

    tokens: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    prefill_s: float
    decode_s: float


class OnnxGenerator:
    """Loads an artifact directory and runs its graphs (batch of one for generation)."""

    def __init__(self, directory: Path, threads: int | None = None):
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.paths = {role: self.directory / g.file for role, g in self.manifest.graphs.items()}
        self.sessions = {role: make_session(path, threads) for role, path in self.paths.items()}

    # --- single graphs ---------------------------------------------------------------------

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        return self._run("embed_tokens", {"input_ids": ids})[0]

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """Features [images, tokens, hidden] projected into the text embedding space."""
        return self.vision_outputs(pixel_values)[0]

    def vision_outputs(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        """Every output of the vision graph, images concatenated (features first)."""
        if "vision_encoder" not in self.sessions:
            raise ValueError(f"this {self.manifest.model_type} artifact has no vision graph")
        pixels = np.asarray(pixel_values, dtype=np.float32)
        shape = self.manifest.pixel_values_shape
        if shape is not None and len(shape) == 5 and pixels.ndim == 4:
            pixels = pixels[:, None]  # an images axis (Idefics3), one image per call
        if shape is not None and len(shape) == 2:  # flattened patches, shape[0] per image
            pixels = pixels.reshape(-1, *shape)
        # the vision graph takes one image per call (fixed-grid export)
        one = (
            (lambda i: pixels[i])
            if shape is not None and len(shape) == 2
            else (lambda i: pixels[i : i + 1])
        )
        runs = [self._run("vision_encoder", {"pixel_values": one(i)}) for i in range(len(pixels))]
        outputs = [np.concatenate([run[0] for run in runs], axis=0)]
        if len(runs[0]) > 1:  # deepstack features [layers, tokens, hidden]: tokens axis
            outputs.append(np.concatenate([run[1] for run in runs], axis=1))
        return outputs

    def _run(self, role: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_graph(self.sessions[role], self.paths[role], feed)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        m = self.manifest
        shape = (batch, m.num_kv_heads, 0, m.head_dim)
        return [np.zeros(shape, np.float32) for _ in range(2 * m.num_layers)]

    def decode(
        self,
        inputs_embeds: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[np.ndarray] | None = None,
        logits_indices: np.ndarray | None = None,
        token_type_ids: np.ndarray | None = None,
        deepstack: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call: logits [batch, len(logits_indices), vocab] and the new cache.

        logits_indices: positions of this call's tokens to project onto the vocabulary
        (None = all of them). token_type_ids: 1 for image tokens, only used by decoders that
        take them (None = all text). The cache is empty without KV.
        """
        seq = inputs_embeds.shape[1]
        keep = np.arange(seq) if logits_indices is None else np.asarray(logits_indices)
        feed: dict[str, np.ndarray] = {
            "inputs_embeds": inputs_embeds.astype(np.float32),
            "attention_mask": attention_mask.astype(np.int64),
            "position_ids": position_ids.astype(np.int64),
            "logits_indices": keep.astype(np.int64).reshape(-1),
        }
        if self.manifest.token_type_ids:
            types = (
                np.zeros(inputs_embeds.shape[:2], np.int64)
                if token_type_ids is None
                else token_type_ids
            )
            feed["token_type_ids"] = types.astype(np.int64)
        if self.manifest.deepstack_layers:
            if deepstack is None:
                shape = (self.manifest.deepstack_layers, *inputs_embeds.shape)
                deepstack = np.zeros(shape, np.float32)
            feed["deepstack_embeds"] = deepstack.astype(np.float32)
        if self.manifest.kv_cache:
            past = past if past is not None else self.empty_past(inputs_embeds.shape[0])
            for i in range(self.manifest.num_layers):
                feed[f"past_key_values.{i}.key"] = past[2 * i]
                feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
        logits, *present = self._run("decoder", feed)
        return logits, present

    # --- prompt assembly -------------------------------------------------------------------

    def prompt_embeds(self, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        """Token embeddings with each image placeholder replaced by one image feature, in order."""
        return self.prompt_inputs(input_ids, pixel_values)[0]

    def prompt_inputs(
        self, input_ids: np.ndarray, pixel_values: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Prompt embeddings, and dense deepstack features for decoders that take them."""
        embeds = self.embed(input_ids)
        if pixel_values is None:
            return embeds, None
        outputs = self.vision_outputs(pixel_values)
        feats = outputs[0].reshape(-1, outputs[0].shape[-1])
        slots = np.asarray(input_ids) == self.manifest.image_token_id
        if int(slots.sum()) != feats.shape[0]:
            raise ValueError(
                f"prompt has {int(slots.sum())} image placeholders but the images give "
                f"{feats.shape[0]} features"
            )
        embeds[slots] = feats.astype(embeds.dtype)
        if len(outputs) < 2:
            return embeds, None
        dense = np.zeros((outputs[1].shape[0], *embeds.shape), np.float32)
        dense[:, slots] = outputs[1]
        return embeds, dense

    def prompt_positions(self, ids: np.ndarray, with_image: bool) -> tuple[np.ndarray, int]:
        """Position ids for one unpadded prompt ([1, S] or [3, 1, S]) and the next position."""
        if self.manifest.position_ids == "mrope":
            grid = tuple(self.manifest.extra["mrope_grid"]) if with_image else (1, 1, 1)
            image_id = int(self.manifest.image_token_id or -1) if with_image else -1
            positions, following = mrope_positions(ids, image_id, grid)  # type: ignore[arg-type]
            return positions[:, None], following
        return np.arange(len(ids), dtype=np.int64)[None], len(ids)

    def step_positions(self, position: int) -> np.ndarray:
        one = np.array([[position]], np.int64)
        return (
            np.broadcast_to(one, (3, 1, 1)).copy() if self.manifest.position_ids == "mrope" else one
        )

    # --- generation ------------------------------------------------------------------------

    def generate(
        self,
        input_ids: list[int] | np.ndarray,
        pixel_values: np.ndarray | None = None,
        max_new_tokens: int = 32,
        on_token: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Greedy tokens for one prompt, stopping after an eos id or `max_new_tokens`.

        on_token: called with each token id as soon as it is chosen (streaming output).
        """
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        embeds, deepstack = self.prompt_inputs(ids, pixel_values)
        eos = set(self.manifest.eos_token_ids)
        tokens: list[int] = []
        past: list[np.ndarray] | None = None
        total = ids.shape[1]
        step_in = embeds
        positions, next_position = self.prompt_positions(ids[0], pixel_values is not None)
        types = (ids == self.manifest.image_token_id).astype(np.int64)
        t0 = time.perf_counter()
        prefill_s = 0.0
        while len(tokens) < max_new_tokens:
            mask = np.ones((1, total), np.int64)
            last = np.array([step_in.shape[1] - 1], np.int64)
            logits, present = self.decode(step_in, mask, positions, past, last, types, deepstack)
            if not tokens:
                prefill_s = time.perf_counter() - t0
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token in eos:
                break
            new = self.embed(np.array([[token]], np.int64))
            if self.manifest.kv_cache:
                past, step_in = present, new
                positions = self.step_positions(next_position)
                types = np.zeros((1, 1), np.int64)
                deepstack = None  # no image tokens among generated ones
            else:  # no cache: recompute the whole sequence
                step_in = np.concatenate([step_in, new], axis=1)
                positions = np.concatenate([positions, self.step_positions(next_position)], axis=-1)
                types = np.concatenate([types, np.zeros((1, 1), np.int64)], axis=1)
                if deepstack is not None:
                    deepstack = np.concatenate(
                        [deepstack, np.zeros_like(deepstack[:, :, :1])], axis=2
                    )
            next_position += 1
            total += 1
        decode_s = time.perf_counter() - t0 - prefill_s
        return GenerationResult(tuple(tokens), tuple(int(i) for i in ids[0]), prefill_s, decode_s)
