"""Loading the model to prune (and its processor) from a local directory or a hub id."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.arch.checkpoint import read_config_json, storage_dtype, verify_checkpoint
from prunec.arch.precision import ITEMSIZE, install_upcast, resolve_dtypes
from prunec.errors import BuildError

if TYPE_CHECKING:
    from torch import nn

    from prunec.plan.model import ModelSpec


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score and prune.

    model: the transformers model, in eval mode, on the spec's device, weights in the held dtype.
    processor: AutoProcessor when the checkpoint has one (VLMs), else AutoTokenizer, else
        None (no tokenizer files at all).
    source_dir: the local checkpoint directory (a local path, or the hub cache snapshot when
        it could be resolved); None when unknown. Emitters copy processor files from it, and
        stream the pruned checkpoint from its safetensors shards.
    num_layers: decoder layer count at load time (before any surgery).
    storage_dtype: the checkpoint's floating dtype on disk ("bfloat16", ...); artifacts keep it.
    compute_dtype: the dtype forward passes compute in (the spec's `dtype`, resolved by
        `prunec.arch.precision.resolve_dtypes`); weights are held in `storage_dtype` when
        this is wider, and upcast module by module just in time.
    """

    model: nn.Module
    processor: Any
    source_dir: Path | None
    num_layers: int
    storage_dtype: str = "float32"
    compute_dtype: str = "float32"


class LazyModel:
    """Loads `spec` on the first `get()` and keeps it: stages that may not need the model
    (cached scores, a cached search) share one load, or none."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.loaded: LoadedModel | None = None

    def get(self) -> LoadedModel:
        if self.loaded is None:
            self.loaded = load_model(self.spec)
        return self.loaded


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_vlm(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or hasattr(
        config, "vision_config"
    )


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds.

    huggingface_hub retries an unreachable hub for about 25 s per file; asking once up front
    lets an offline build use the local cache at once, or fail at once with a clear reason.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urlparse(constants.ENDPOINT)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "huggingface.co", port), timeout):
            return True
    except OSError:
        return False


def load_config(spec: ModelSpec, local_only: bool) -> Any:
    """The model's transformers config; BuildError naming the file or hub id on failure."""
    from transformers import AutoConfig

    if spec.local:
        if not Path(spec.source).is_dir():
            raise BuildError(f"model directory not found: {spec.source}")
        read_config_json(Path(spec.source))  # a missing or broken file, named precisely
    try:
        return AutoConfig.from_pretrained(
            spec.source,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=local_only,
        )
    except Exception as exc:  # transformers' many ways of rejecting a config file
        if local_only and not spec.local:
            raise BuildError(
                f"cannot load `{spec.source}`: the hub cannot be reached and the model is not "
                "in the local cache; download it first or point `model` at a local directory"
            ) from exc
        hint = "" if spec.local else " (is the hub reachable, or is it cached locally?)"
        where = f"{Path(spec.source) / 'config.json'}" if spec.local else f"`{spec.source}`"
        raise BuildError(f"cannot load the config {where}{hint}: {_one_line(exc)}") from exc


def _config_dtype(config: Any) -> str | None:
    for cfg in (config, config.get_text_config(decoder=True)):
        value = getattr(cfg, "dtype", None)
        name = str(value).removeprefix("torch.") if value is not None else None
        if name in ITEMSIZE:
            return name
    return None


def _load_weights(spec: ModelSpec, config: Any, local_only: bool, load_dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if _is_vlm(config) else AutoModelForCausalLM
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        # The held dtype, never a wider one: a float32 request on a bf16 checkpoint would
        # materialise a float32 copy (3x the checkpoint at the peak). Without a conversion,
        # transformers maps the safetensors files and the weights are the file's pages.
        "dtype": getattr(torch, load_dtype),
        "local_files_only": local_only,
    }
    offload = None
    if spec.device == "auto":
        # accelerate spreads layers over the GPUs, then CPU memory, then disk: weights that
        # fit nowhere stay in the checkpoint's safetensors files (or, converted, in a
        # temporary folder under $PRUNEC_OFFLOAD_DIR) and are read in layer by layer during
        # each forward.
        parent = os.environ.get("PRUNEC_OFFLOAD_DIR") or None
        offload = Path(tempfile.mkdtemp(prefix="prunec-offload-", dir=parent))
        kwargs["device_map"] = "auto"
        kwargs["offload_folder"] = str(offload)
        budget = max_memory()
        if budget:
            kwargs["max_memory"] = budget
    if spec.local:
        verify_checkpoint(Path(spec.source))  # truncated or corrupt shards, named precisely
    try:
        model = auto.from_pretrained(spec.source, config=config, **kwargs)
    except Exception as exc:  # broken weight files reach us as many exception types
        if offload is not None:
            shutil.rmtree(offload, ignore_errors=True)
        reason = _one_line(exc)
        if "mismatch" in reason.lower():
            reason = "tensor shapes in the checkpoint do not match its config.json"
        raise BuildError(
            f"cannot load `{spec.source}` as {auto.__name__} "
            f"(model type `{config.model_type}`): {reason}"
        ) from exc
    if offload is not None and any(offload.iterdir()):
        weakref.finalize(model, shutil.rmtree, offload, True)  # goes with the model it serves
    elif offload is not None:
        offload.rmdir()
    if spec.device not in ("auto", "cpu"):
        try:
            model = model.to(spec.device)  # type: ignore[arg-type]
        except (RuntimeError, AssertionError) as exc:
            raise BuildError(f"cannot move the model to `{spec.device}`: {_one_line(exc)}") from exc
    return model.eval()


def max_memory() -> dict[int | str, str] | None:
    """accelerate's `max_memory` for `device auto`, from `$PRUNEC_MAX_MEMORY`
    ("0=20GiB,1=20GiB,cpu=64GiB": GPU index or `cpu`/`mps` = a size accelerate reads); None
    when unset (accelerate then uses what the devices have free)."""
    text = os.environ.get("PRUNEC_MAX_MEMORY", "").strip()
    if not text:
        return None
    budget: dict[int | str, str] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value or not (key.isdigit() or key in ("cpu", "mps")):
            raise BuildError(
                f"$PRUNEC_MAX_MEMORY: `{item.strip()}` is not DEVICE=SIZE (DEVICE a GPU index, "
                "`cpu` or `mps`; SIZE like 20GiB), e.g. PRUNEC_MAX_MEMORY=0=20GiB,cpu=64GiB"
            )
        budget[int(key) if key.isdigit() else key] = value
    return budget


def load_processor(
    source: str, revision: str | None = None, trust: bool = False, local_only: bool = False
) -> Any:
    """AutoProcessor when the checkpoint has one, else AutoTokenizer, else None."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust,
        "local_files_only": local_only,
    }
    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except Exception:
        pass
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception:
        return None


def _source_dir(spec: ModelSpec) -> Path | None:
    if spec.local:
        return Path(spec.source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.source, revision=spec.revision, local_files_only=True))
    except Exception:
        return None


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load `spec.source` (local dir or hub id) with its processor; BuildError on failure.

    VLMs (configs with a vision part) load via AutoModelForImageTextToText, text LMs via
    AutoModelForCausalLM. `trust_remote_code` is passed only as the spec says. When the hub
    cannot be reached, a hub id loads from the local cache only (no retry storm). The spec's
    `dtype` is the compute dtype; weights stay in the checkpoint's dtype when that is
    narrower (see `prunec.arch.precision`).
    """
    import torch

    from prunec.arch.locate import locate_decoder
    from prunec.distributed import placed_device
    from prunec.progress import progress

    spec = spec.model_copy(update={"device": placed_device(spec.device)})  # cuda: own GPU
    local_only = not spec.local and not hub_reachable()
    with progress(f"loading {spec.source}") as bar:
        config = load_config(spec, local_only)
        source_dir = _source_dir(spec)
        stored = storage_dtype(source_dir) if source_dir is not None else None
        stored = stored or _config_dtype(config) or "float32"
        load_dtype, compute = resolve_dtypes(spec.dtype, stored, spec.device)
        if spec.device == "auto":
            load_dtype = compute  # accelerate's offload hooks own the forward: no upcast
        bar.update(note=f"({stored} weights)")
        model = _load_weights(spec, config, local_only, load_dtype)
        if compute != load_dtype:
            install_upcast(model, getattr(torch, compute))
        stack = locate_decoder(model)
        processor = load_processor(spec.source, spec.revision, spec.trust_remote_code, local_only)
    return LoadedModel(
        model=model,
        processor=processor,
        source_dir=source_dir or _source_dir(spec),
        num_layers=len(stack.layers),
        storage_dtype=stored,
        compute_dtype=compute,
    )
