"""Synthetic two-domain image/question/answer samples drawn with PIL (math and general)."""

from __future__ import annotations

import hashlib
import random
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
COLUMNS: tuple[str, ...] = ("left", "middle", "right")
DOMAINS: tuple[str, ...] = ("math", "general")

#: Math: count dots, or count the dots of one colour (two colours per image).
MATH_QUESTIONS: dict[str, str] = {
    "total": "how many dots are there ?",
    "red": "how many red dots are there ?",
    "blue": "how many blue dots are there ?",
}
#: General: name the single shape's colour, kind or column.
GENERAL_QUESTIONS: dict[str, str] = {
    "colour": "what color is the shape ?",
    "shape": "what shape is it ?",
    "column": "where is the shape ?",
}


@dataclass(frozen=True)
class Sample:
    """One synthetic example: an image, a question and its one-word answer."""

    domain: str
    image: Image.Image
    text: str
    answer: str

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
    words += [str(i) for i in range(10)]
    words += [*COLOURS, *SHAPES, *COLUMNS]
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
    """Red and blue dots in distinct grid cells; ask for the total or one colour's count."""
    total = rng.randint(1, GRID * GRID)
    reds = rng.randint(0, total)
    cells = rng.sample(range(GRID * GRID), total)
    image, draw = _canvas()
    for i, cell in enumerate(cells):
        colour = COLOURS["red"] if i < reds else COLOURS["blue"]
        draw.ellipse(_cell_box(cell, rng.randint(3, 5), rng), fill=colour)
    kind = rng.choice(tuple(MATH_QUESTIONS))
    answer = {"total": total, "red": reds, "blue": total - reds}[kind]
    return Sample("math", image, MATH_QUESTIONS[kind], str(answer))


def general_sample(rng: random.Random) -> Sample:
    """One coloured shape in one grid cell; ask for its colour, kind or column."""
    colour = rng.choice(tuple(COLOURS))
    shape = rng.choice(SHAPES)
    cell = rng.randrange(GRID * GRID)
    image, draw = _canvas()
    x0, y0, x1, y1 = _cell_box(cell, 2, rng)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    kind = rng.choice(tuple(GENERAL_QUESTIONS))
    answer = {"colour": colour, "shape": shape, "column": COLUMNS[cell % GRID]}[kind]
    return Sample("general", image, GENERAL_QUESTIONS[kind], answer)


def sample(domain: str, rng: random.Random) -> Sample:
    """One sample of `domain` ("math" or "general")."""
    if domain == "math":
        return math_sample(rng)
    if domain == "general":
        return general_sample(rng)
    raise ValueError(f"unknown testbed domain {domain!r}; expected one of {DOMAINS}")
