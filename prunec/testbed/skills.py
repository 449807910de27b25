"""Multi-skill synthetic tasks for the results testbeds, where pruning strategies separate.

The demo's tasks each need one skill, and a small model gets them 100% right. Here a math
question needs several: read a seven-segment digit, count dots, then add the two (or count the
dots of one colour). A general question asks about the big shape or the small one.

Layout: 48x48 pixels on a 3x3 grid of 16-pixel cells (one image token per cell). One big
object spans the whole picture, as in the demo; small objects sit one per cell, drawn over it.
Two things make this learnable in minutes by a 16-layer model trained from scratch (measured;
without them it still guessed after 1000 steps): a signal spread over every image token (the
big object) is what such a model learns to read first, and the general questions of a mix
have disjoint answers (a colour, a kind, a row). Two questions with the same answers about
different objects cancel each other's pull toward the picture until the model can tell the
questions apart, which it learns only once it reads the picture.

Two task mixes, so the two results testbeds differ in what they learn as well as in
architecture: `skills` (count, read, add; colour of the big shape, kind and row of the small
one) and `skills-b` (count one colour, read, add; kind of the big shape, colour and row of
the small one).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from prunec.testbed.synth import Sample, TaskSet

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
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
MAX_DOTS = 6

#: Seven-segment digits: segments a (top), b (top right), c (bottom right), d (bottom),
#: e (bottom left), f (top left), g (middle).
SEGMENTS: dict[int, str] = {
    0: "abcdef",
    1: "bc",
    2: "abged",
    3: "abgcd",
    4: "fgbc",
    5: "afgcd",
    6: "afgedc",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}

#: Question per math task; `{colour}` is filled in by the sample.
MATH: dict[str, str] = {
    "count": "how many dots ?",
    "count_colour": "how many {colour} dots ?",
    "read": "which number ?",
    "add": "number plus dots ?",
}
#: Question per general task.
GENERAL: dict[str, str] = {
    "big_colour": "color of the big shape ?",
    "big_shape": "shape of the big one ?",
    "small_colour": "color of the small shape ?",
    "small_shape": "shape of the small one ?",
    "small_row": "which row is the small shape ?",
}


def _words() -> tuple[str, ...]:
    words = ["user", "assistant"]
    for text in (*MATH.values(), *GENERAL.values()):
        words += [w for w in text.split() if not w.startswith("{")]
    words += [str(i) for i in range(9 + MAX_DOTS + 1)]  # counts, digits 0-9, sums
    words += [*ROWS, *COLOURS, *SHAPES]
    return tuple(dict.fromkeys(words))


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _box(width: int, height: int, cell: int | None, rng: random.Random) -> tuple[int, ...]:
    """A `width` x `height` box jittered by up to 2 pixels around the centre of grid cell `cell`
    (row-major), or of the picture when `cell` is None; always inside the picture."""
    if cell is None:
        cx = cy = IMAGE_SIZE // 2
    else:
        row, col = divmod(cell, GRID)
        cx, cy = col * CELL + CELL // 2, row * CELL + CELL // 2
    x0 = min(max(cx - width // 2 + rng.randint(-2, 2), 0), IMAGE_SIZE - width)
    y0 = min(max(cy - height // 2 + rng.randint(-2, 2), 0), IMAGE_SIZE - height)
    return x0, y0, x0 + width - 1, y0 + height - 1  # PIL boxes include both corners


def draw_digit(draw: ImageDraw.ImageDraw, digit: int, rng: random.Random) -> None:
    """A black seven-segment `digit` spanning the picture (28x40 pixels, strokes of 6)."""
    width, height, t = 28, 40, 6
    x0, y0, x1, y1 = _box(width, height, None, rng)
    mid = y0 + (height - t) // 2
    half = y0 + height // 2
    rects = {
        "a": (x0, y0, x1, y0 + t - 1),
        "d": (x0, y1 - t + 1, x1, y1),
        "g": (x0, mid, x1, mid + t - 1),
        "f": (x0, y0, x0 + t - 1, half),
        "b": (x1 - t + 1, y0, x1, half),
        "e": (x0, half, x0 + t - 1, y1),
        "c": (x1 - t + 1, half, x1, y1),
    }
    for segment in SEGMENTS[digit]:
        draw.rectangle(rects[segment], fill=(0, 0, 0))


def draw_object(
    draw: ImageDraw.ImageDraw,
    shape: str,
    colour: str,
    size: int,
    cell: int | None,
    rng: random.Random,
) -> None:
    """A filled `shape` of `size` pixels in `colour`, in `cell` (None: the picture's centre)."""
    x0, y0, x1, y1 = _box(size, size, cell, rng)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def math_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """A big digit 0-9 with 1-6 small dots over it; one question of `tasks` about them."""
    task = rng.choice(tasks)
    digit, count = rng.randint(0, 9), rng.randint(1, MAX_DOTS)
    image, draw = _canvas()
    draw_digit(draw, digit, rng)
    # count_colour paints the dots in two colours and asks for one of them; elsewhere the
    # colours are a distraction.
    palette = rng.sample(tuple(COLOURS), 2) if task == "count_colour" else tuple(COLOURS)
    dots = [rng.choice(palette) for _ in range(count)]
    for cell, colour in zip(rng.sample(range(GRID * GRID), count), dots, strict=True):
        draw_object(draw, "circle", colour, rng.randint(7, 9), cell, rng)
    asked = palette[0]
    answer = {
        "count": count,
        "count_colour": dots.count(asked),
        "read": digit,
        "add": digit + count,
    }[task]
    return Sample("math", image, MATH[task].format(colour=asked), str(answer), task)


def general_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """A big shape with a small one of another kind and colour over it; one question."""
    task = rng.choice(tasks)
    (big, small), (big_colour, small_colour) = rng.sample(SHAPES, 2), rng.sample(tuple(COLOURS), 2)
    cell = rng.randrange(GRID * GRID)
    image, draw = _canvas()
    draw_object(draw, big, big_colour, rng.randint(34, 42), None, rng)
    draw_object(draw, small, small_colour, rng.randint(9, 11), cell, rng)
    answer = {
        "big_colour": big_colour,
        "big_shape": big,
        "small_colour": small_colour,
        "small_shape": small,
        "small_row": ROWS[cell // GRID],
    }[task]
    return Sample("general", image, GENERAL[task], answer, task)


def _task_set(name: str, math: tuple[str, ...], general: tuple[str, ...]) -> TaskSet:
    def draw(domain: str, rng: random.Random) -> Sample:
        return math_sample(math, rng) if domain == "math" else general_sample(general, rng)

    return TaskSet(
        name=name,
        image_size=IMAGE_SIZE,
        grid=GRID,
        words=_words(),
        questions={
            "math": {t: MATH[t] for t in math},
            "general": {t: GENERAL[t] for t in general},
        },
        draw=draw,
    )


_SETS: tuple[TaskSet, ...] = (
    _task_set("skills", ("count", "read", "add"), ("big_colour", "small_shape", "small_row")),
    _task_set(
        "skills-b", ("count_colour", "read", "add"), ("big_shape", "small_colour", "small_row")
    ),
)
#: The multi-skill task sets by name.
TASK_SETS: dict[str, TaskSet] = {s.name: s for s in _SETS}
