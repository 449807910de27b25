"""Deterministic from-scratch training of the testbed VLM on synthetic two-domain data."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prunec.testbed.processor import image_inputs
from prunec.testbed.synth import DOMAINS, Sample, TaskSet, task_set

#: Bump when the data generator or the training loop changes meaning without a config change,
#: so cached testbeds retrain.
RECIPE_VERSION = 3


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache marker).

    steps: optimizer steps (fixed, never time-based, so the result is deterministic).
    batch_size: samples per step, half from each domain.
    lr / warmup / weight_decay: AdamW with linear warm-up and cosine decay to 10%.
    num_layers / hidden_size: the Llama decoder's depth and width.
    calib_samples / eval_samples: lines per domain written to the JSONL files.
    seed: seeds torch and the data stream.
    tasks: the task set the samples come from (`prunec.testbed.synth.task_set`).
    family: the model family (`llava` or `idefics3`, see `prunec.testbed.model`).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    num_layers: int = 16
    hidden_size: int = 64
    calib_samples: int = 128
    eval_samples: int = 200
    seed: int = 0
    tasks: str = "demo"
    family: str = "llava"

    @property
    def task_set(self) -> TaskSet:
        return task_set(self.tasks)

    def fingerprint(self) -> str:
        """A short hash of the recipe; a changed recipe means a retrain."""
        blob = json.dumps({**asdict(self), "recipe": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HeldOut:
    """Calibration and evaluation samples per domain, kept out of the training stream."""

    calib: dict[str, list[Sample]]
    eval: dict[str, list[Sample]]

    def keys(self) -> set[str]:
        every = [*self.calib.values(), *self.eval.values()]
        return {s.key() for group in every for s in group}


def held_out(config: TrainConfig) -> HeldOut:
    """Distinct calibration and evaluation samples (no duplicates within or across sets)."""
    rng = random.Random(f"held-out-{config.seed}")
    tasks = config.task_set
    seen: set[str] = set()

    def draw(domain: str, n: int) -> list[Sample]:
        out: list[Sample] = []
        while len(out) < n:
            s = tasks.sample(domain, rng)
            if s.key() not in seen:
                seen.add(s.key())
                out.append(s)
        return out

    calib = {d: draw(d, config.calib_samples) for d in DOMAINS}
    evals = {d: draw(d, config.eval_samples) for d in DOMAINS}
    return HeldOut(calib=calib, eval=evals)


class _Encoder:
    """Training batches in the exact form the saved processor gives: prompt ids from the
    processor once per distinct question (they do not depend on the image's content), pixels
    through the vectorised mirror of its image processor."""

    def __init__(self, processor: Any, family: str = "llava", tasks: TaskSet | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self.tasks = tasks or task_set("demo")
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        if text not in self._prompts:
            from PIL import Image

            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            ]
            rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            size = self.tasks.image_size
            blank = Image.new("RGB", (size, size), (255, 255, 255))
            out = self.processor(text=[rendered], images=[[blank]])
            self._prompts[text] = [int(i) for i in out["input_ids"][0]]
        return self._prompts[text]

    def batch(self, samples: Sequence[Sample]) -> dict[str, Any]:
        import torch

        rows, labels = [], []
        for s in samples:
            prompt = self.prompt(s.text)
            answer = [
                *self.tokenizer(s.answer, add_special_tokens=False)["input_ids"],
                self.tokenizer.eos_token_id,
            ]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            lab[i, : len(lb)] = torch.tensor(lb)
            mask[i, : len(r)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": lab,
            **image_inputs(self.family, [s.image for s in samples]),
        }


def training_stream(config: TrainConfig, exclude: set[str]) -> Iterator[list[Sample]]:
    """Batches of fresh samples (half per domain), skipping anything held out."""
    rng = random.Random(f"train-{config.seed}")
    tasks = config.task_set
    per_domain = config.batch_size // len(DOMAINS)
    while True:
        batch: list[Sample] = []
        for domain in DOMAINS:
            while sum(s.domain == domain for s in batch) < per_domain:
                s = tasks.sample(domain, rng)
                if s.key() not in exclude:
                    batch.append(s)
        yield batch


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(config: TrainConfig, processor: Any) -> Any:
    """A freshly initialised testbed model (seeded) matching `processor`'s vocabulary."""
    import torch
    import transformers

    from prunec.testbed.model import MODEL_CLASSES, build_config

    tok = processor.tokenizer
    torch.manual_seed(config.seed)
    hf_config = build_config(
        vocab_size=len(tok),
        image_token_id=processor.image_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        family=config.family,
        tasks=config.task_set,
    )
    model = getattr(transformers, MODEL_CLASSES[config.family])(hf_config)
    _scale_residual_init(model, config.num_layers)
    return model


def _scale_residual_init(model: Any, num_layers: int) -> None:
    """Shrink each decoder layer's residual-branch output weights by 1/sqrt(2 * layers).

    GPT-2's scaled initialisation: a deep stack then starts close to the identity and trains
    about as fast as a shallow one, which is what makes 16 layers affordable on 2 CPU cores.
    """
    import torch

    from prunec.arch.locate import locate_decoder

    scale = (2 * num_layers) ** -0.5
    layers: Any = locate_decoder(model).layers
    with torch.no_grad():
        for layer in layers:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)


def train(
    config: TrainConfig,
    processor: Any,
    held: HeldOut,
    on_step: Callable[[int, float], None] | None = None,
) -> Any:
    """Train the testbed from scratch; `on_step(step, loss)` is called after every step."""
    import torch

    threads = torch.get_num_threads()
    # One thread: float reductions then do not depend on the machine's core count (the same
    # recipe gives the same weights everywhere), and on a busy 2-core box it is also faster.
    torch.set_num_threads(1)
    try:
        return _train(config, processor, held, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig,
    processor: Any,
    held: HeldOut,
    on_step: Callable[[int, float], None] | None,
) -> Any:
    import torch

    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    model = build_model(config, processor)
    model.train()
    optim = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    encoder = _Encoder(processor, config.family, config.task_set)
    stream = training_stream(config, held.keys())
    for step in range(config.steps):
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, config)
        batch = encoder.batch(next(stream))
        loss = model(**batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    model.eval()
    return model
