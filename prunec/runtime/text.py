"""Prompt building without transformers: `tokenizers` for ids, jinja2 for the chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    # tokenizer_config writes special tokens either as strings or as AddedToken dicts
    if isinstance(value, dict):
        return str(value.get("content"))
    return None if value is None else str(value)


def load_chat_template(directory: Path) -> str | None:
    """The chat template saved with the tokenizer/processor, wherever transformers put it."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name, key in (
        ("chat_template.json", "chat_template"),
        ("tokenizer_config.json", "chat_template"),
    ):
        template = _read_json(directory / name).get(key)
        if isinstance(template, str):
            return template
    return None


class PromptBuilder:
    """Turns a user prompt (and whether an image is attached) into input ids."""

    def __init__(self, directory: Path, image_token_id: int | None = None):
        self.directory = Path(directory)
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        config = _read_json(self.directory / "tokenizer_config.json")
        self.special = {
            key: _token_text(config.get(key))
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self.chat_template = load_chat_template(self.directory)
        self.image_token_id = image_token_id

    def render(self, prompt: str, with_image: bool) -> str:
        """The chat-formatted prompt (or the raw prompt when the model has no template)."""
        if self.chat_template is None:
            if with_image:
                raise ValueError("this artifact has no chat template to place the image in")
            return prompt
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # the same environment settings transformers uses, so templates render identically
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, **kw)
        content: Any = prompt
        if with_image:
            content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=True, **self.special
        )

    def encode(
        self, text: str, expansion: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    ) -> np.ndarray:
        """Token ids; `expansion` = (placeholder ids, the ids that replace each occurrence)."""
        ids = list(self.tokenizer.encode(text).ids)
        if expansion is not None:
            ids = replace_runs(ids, *expansion)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def replace_runs(ids: list[int], old: tuple[int, ...], new: tuple[int, ...]) -> list[int]:
    """Replace every occurrence of the id sequence `old` in `ids` by `new`."""
    if not old:
        return ids
    out: list[int] = []
    i = 0
    while i < len(ids):
        if tuple(ids[i : i + len(old)]) == old:
            out += new
            i += len(old)
        else:
            out.append(ids[i])
            i += 1
    return out


def image_expansion(manifest: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """What replaces one image's placeholder ids in a prompt, from the artifact's manifest."""
    if manifest.image_placeholder_ids is not None and manifest.image_expansion_ids is not None:
        return tuple(manifest.image_placeholder_ids), tuple(manifest.image_expansion_ids)
    if manifest.image_token_id is None or not manifest.image_tokens_per_image:
        return None
    token = int(manifest.image_token_id)
    return (token,), (token,) * int(manifest.image_tokens_per_image)
