"""Synthetic two-domain image/question/answer samples drawn with PIL (math and general).

A `TaskSet` is one family of such samples: its image size and grid, its vocabulary and a
drawing function. `demo` (here) is the quick set `make demo` trains on; the multi-skill sets
the results testbeds train on live in `prunec.testbed.skills`. `task_set(name)` looks one up.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Image side in pixels and the grid it is drawn on. One grid cell = one vision patch, so
#: every object sits inside one patch token: this is what makes the tasks learnable by a
#: tiny model in minutes (see DESIGN.md, "A trained testbed on 2 CPU cores").
IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (150, 40, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DOMAINS: tuple[str, ...] = ("math", "general")

#: Math: count the dots (1-9), or count them and add one (2-10).
MATH_QUESTIONS: dict[str, str] = {
    "count": "how many dots are there ?",
    "plus": "how many dots plus one ?",
}
#: General: name the colour or the kind of one large shape.
GENERAL_QUESTIONS: dict[str, str] = {
    "colour": "what color is the shape ?",
    "shape": "what shape is it ?",
}


@dataclass(frozen=True)
class Sample:
    """One synthetic example: an image, a question and its one-word answer.

    task: which skill the question tests within its domain (e.g. "count"), for per-task
        accuracy; it is not written to the JSONL files (their format has no such field).
    """

    domain: str
    image: Image.Image
    text: str
    answer: str
    task: str = ""

    def key(self) -> str:
        """Content hash of (image pixels, question); used to keep eval data out of training."""
        digest = hashlib.sha1(self.image.tobytes())
        digest.update(self.text.encode())
        return digest.hexdigest()


def vocabulary() -> list[str]:
    """Every word any question or answer can contain, in a fixed order."""
    words: list[str] = ["user", "assistant"]
    for text in (*MATH_QUESTIONS.values(), *GENERAL_QUESTIONS.values()):
        words += text.split()
    words += [str(i) for i in range(11)]
    words += [*COLOURS, *SHAPES]
    return list(dict.fromkeys(words))


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _cell_box(cell: int, margin: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A jittered square box inside grid cell `cell` (row-major)."""
    row, col = divmod(cell, GRID)
    size = CELL - 2 * margin
    x0 = col * CELL + margin + rng.randint(-1, 1)
    y0 = row * CELL + margin + rng.randint(-1, 1)
    return x0, y0, x0 + size, y0 + size


def math_sample(rng: random.Random) -> Sample:
    """1-9 dots of mixed colours in distinct grid cells; ask for the count or the count + 1."""
    count = rng.randint(1, GRID * GRID)
    image, draw = _canvas()
    for cell in rng.sample(range(GRID * GRID), count):
        colour = COLOURS[rng.choice(tuple(COLOURS))]
        draw.ellipse(_cell_box(cell, rng.randint(3, 5), rng), fill=colour)
    kind = rng.choice(tuple(MATH_QUESTIONS))
    answer = count + (kind == "plus")
    return Sample("math", image, MATH_QUESTIONS[kind], str(answer), kind)


def general_sample(rng: random.Random) -> Sample:
    """One large coloured shape near the centre; ask for its colour or its kind.

    The shape spans most of the image, so its kind shows in how much of each patch it covers
    (square > circle > triangle), a feature a small model picks up quickly.
    """
    colour = rng.choice(tuple(COLOURS))
    shape = rng.choice(SHAPES)
    image, draw = _canvas()
    size = rng.randint(34, 42)
    x0 = (IMAGE_SIZE - size) // 2 + rng.randint(-2, 2)
    y0 = (IMAGE_SIZE - size) // 2 + rng.randint(-2, 2)
    x1, y1 = x0 + size, y0 + size
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    kind = rng.choice(tuple(GENERAL_QUESTIONS))
    answer = {"colour": colour, "shape": shape}[kind]
    return Sample("general", image, GENERAL_QUESTIONS[kind], answer, kind)


def sample(domain: str, rng: random.Random) -> Sample:
    """One sample of `domain` ("math" or "general")."""
    if domain == "math":
        return math_sample(rng)
    if domain == "general":
        return general_sample(rng)
    raise ValueError(f"unknown testbed domain {domain!r}; expected one of {DOMAINS}")


@dataclass(frozen=True)
class TaskSet:
    """A family of synthetic samples a testbed trains and is evaluated on.

    image_size / grid: square images of `image_size` pixels drawn on a `grid` x `grid` layout of
        cells; every object sits inside one cell, and the model families make one image token
        per cell (see `prunec.testbed.model`).
    words: every word a question or an answer can contain (the tokenizer's vocabulary).
    questions: per domain, per task, the question; `{name}` marks a word the sample fills in.
        Each question tells its task (`task_of`), so evaluation files need no task field.
    draw: `draw(domain, rng)` -> one Sample of that domain.
    """

    name: str
    image_size: int
    grid: int
    words: tuple[str, ...]
    questions: Mapping[str, Mapping[str, str]]
    draw: Callable[[str, random.Random], Sample]

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    @property
    def tasks(self) -> dict[str, tuple[str, ...]]:
        """Per domain, its task names."""
        return {domain: tuple(qs) for domain, qs in self.questions.items()}

    def task_of(self, domain: str, text: str) -> str:
        """The task whose question `text` is (ValueError when none is)."""
        for task, question in self.questions[domain].items():
            pattern = r"\S+".join(re.escape(part) for part in re.split(r"\{\w+\}", question))
            if re.fullmatch(pattern, text):
                return task
        raise ValueError(f"{text!r} is no {domain} question of task set {self.name!r}")

    def sample(self, domain: str, rng: random.Random) -> Sample:
        if domain not in self.tasks:
            raise ValueError(f"unknown testbed domain {domain!r}; expected one of {DOMAINS}")
        return self.draw(domain, rng)


DEMO = TaskSet(
    name="demo",
    image_size=IMAGE_SIZE,
    grid=GRID,
    words=tuple(vocabulary()),
    questions={"math": MATH_QUESTIONS, "general": GENERAL_QUESTIONS},
    draw=sample,
)


def task_set(name: str) -> TaskSet:
    """The task set called `name` (`demo`, or one of `prunec.testbed.skills.TASK_SETS`)."""
    from prunec.testbed.skills import TASK_SETS

    sets = {"demo": DEMO, **TASK_SETS}
    if name not in sets:
        raise ValueError(f"unknown task set {name!r}; expected one of {', '.join(sets)}")
    return sets[name]
