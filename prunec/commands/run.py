"""`prunec run`: greedy generation with an ONNX artifact, in onnxruntime and numpy only.

Nothing on this path imports torch or transformers (a test checks it), so an artifact runs
on a machine that has only onnxruntime, tokenizers, jinja2, numpy and Pillow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from prunec.errors import BuildError


def _load(directory: Path, threads: int | None):  # type: ignore[no-untyped-def]
    from prunec.runtime import MANIFEST_FILE, OnnxGenerator

    if not (directory / MANIFEST_FILE).is_file():
        raise click.BadParameter(
            f"{directory} is not an ONNX artifact (no {MANIFEST_FILE})", param_hint="DIR"
        )
    try:
        return OnnxGenerator(directory, threads=threads)
    except ValueError as err:
        raise BuildError(f"cannot load {directory}: {err}") from err


def _pixels(directory: Path, image: Path, manifest: object) -> object:
    from PIL import Image, UnidentifiedImageError

    from prunec.runtime.image import load_image_config, preprocess_for

    try:
        with Image.open(image) as img:
            return preprocess_for(manifest, img, load_image_config(directory))
    except (OSError, UnidentifiedImageError) as err:
        raise click.BadParameter(f"cannot read image {image}: {err}", param_hint="--image") from err


class TextStream:
    """Prints generated text as tokens arrive.

    Each step decodes every token so far and prints what was added since the last print, so
    a character spread over several byte-level tokens appears once it is complete (a
    trailing U+FFFD means "incomplete" and waits for the next token).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self.shown = ""

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.decode(self.tokens)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return
        click.echo(text[len(self.shown) :], nl=False)
        self.shown = text

    def finish(self) -> None:
        """Print what is left and end the line."""
        text = self.decode(self.tokens)
        click.echo(text[len(self.shown) :] if text.startswith(self.shown) else "")
        self.shown = text


@click.command("run")
@click.argument(
    "directory", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--prompt", required=True, help="The user prompt.")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An image to attach (vision-language artifacts only).",
)
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="onnxruntime intra-op threads [default: available CPUs].",
)
@click.option("--no-chat-template", is_flag=True, help="Tokenize the prompt as is.")
@click.option("--ids", "show_ids", is_flag=True, help="Also print the generated token ids.")
def command(
    directory: Path,
    prompt: str,
    image: Path | None,
    max_new_tokens: int,
    threads: int | None,
    no_chat_template: bool,
    show_ids: bool,
) -> None:
    """Generate text greedily from an ONNX artifact written by `target onnx`."""
    from prunec.runtime.text import PromptBuilder, image_expansion

    gen = _load(directory, threads)
    manifest = gen.manifest
    if image is not None and "vision_encoder" not in manifest.graphs:
        raise click.BadParameter(
            f"this {manifest.model_type} artifact has no vision graph", param_hint="--image"
        )
    builder = PromptBuilder(directory, manifest.image_token_id)
    if no_chat_template:
        text = prompt
    else:
        try:
            text = builder.render(prompt, with_image=image is not None)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--image") from err
    pixels = _pixels(directory, image, manifest) if image is not None else None
    ids = builder.encode(text, image_expansion(manifest) if image is not None else None)
    stream = TextStream(builder.decode)
    try:
        result = gen.generate(
            ids,
            pixels,  # type: ignore[arg-type]
            max_new_tokens=max_new_tokens,
            on_token=stream.add,
        )
    except ValueError as err:
        raise BuildError(str(err)) from err
    stream.finish()
    if show_ids:
        click.echo(" ".join(str(t) for t in result.tokens))
    steps = max(len(result.tokens) - 1, 1)
    click.echo(
        f"{len(result.prompt_ids)} prompt tokens, {len(result.tokens)} generated; "
        f"prefill {result.prefill_s * 1e3:.1f} ms, decode {result.decode_s / steps * 1e3:.2f} ms/token",
        err=True,
    )
