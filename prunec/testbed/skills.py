"""Multi-skill synthetic tasks for the results testbeds, where pruning strategies separate.

The demo's tasks each need one skill, and a small model gets them 100% right. Here a math
question needs several: read a seven-segment digit, count dots, then add the two or compare
them. A general question asks about one of several objects, so the model must bind a shape to
its colour (or the reverse). Images are 48x48 pixels on a 3x3 grid of 16-pixel cells with one
object per cell, so each object lands in one image token. Questions are terse: every token
costs training time on 2 CPU cores.

Two task mixes, so the two results testbeds differ in what they learn as well as in
architecture: `skills` (count, read, add, compare; colour of a shape, shape of a colour) and
`skills-b` (count, count one colour, read, add; colour, shape, and the row of a shape).
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
    "compare": "more dots than number ?",
}
#: Question per general task; `{shape}` / `{colour}` name one object in the picture.
GENERAL: dict[str, str] = {
    "colour": "color of the {shape} ?",
    "shape": "shape of the {colour} one ?",
    "place": "which row is the {shape} ?",
}
ROWS: tuple[str, ...] = ("top", "middle", "bottom")


def _words() -> tuple[str, ...]:
    words = ["user", "assistant"]
    for text in (*MATH.values(), *GENERAL.values()):
        words += [w for w in text.split() if not w.startswith("{")]
    words += [str(i) for i in range(GRID * GRID + 9)]  # counts, digits 0-9, sums
    words += ["yes", "no", *ROWS, *COLOURS, *SHAPES]
    return tuple(dict.fromkeys(words))


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _box(cell: int, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A `width` x `height` box in grid cell `cell` (row-major), jittered but inside the cell."""
    row, col = divmod(cell, GRID)
    x0 = col * CELL + (CELL - width) // 2 + rng.randint(-1, 1)
    y0 = row * CELL + (CELL - height) // 2 + rng.randint(-1, 1)
    x0 = min(max(x0, col * CELL), (col + 1) * CELL - width)
    y0 = min(max(y0, row * CELL), (row + 1) * CELL - height)
    return x0, y0, x0 + width - 1, y0 + height - 1  # PIL boxes include both corners


def draw_digit(draw: ImageDraw.ImageDraw, cell: int, digit: int, rng: random.Random) -> None:
    """A black seven-segment `digit` of jittered size in `cell`."""
    width, height, t = rng.randint(7, 9), rng.randint(11, 13), 2
    x0, y0, x1, y1 = _box(cell, width, height, rng)
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
    draw: ImageDraw.ImageDraw, cell: int, shape: str, colour: str, size: int, rng: random.Random
) -> None:
    """A filled `shape` of about `size` pixels in `colour`, inside `cell`."""
    x0, y0, x1, y1 = _box(cell, size, size, rng)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def math_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """A digit 0-9 and 1-8 dots, each in its own cell; one question of `tasks` about them."""
    task = rng.choice(tasks)
    digit, count = rng.randint(0, 9), rng.randint(1, GRID * GRID - 1)
    cells = rng.sample(range(GRID * GRID), count + 1)
    image, draw = _canvas()
    draw_digit(draw, cells[0], digit, rng)
    # count_colour paints the dots in two colours and asks for one of them; the other tasks
    # use any colours (colour is a distraction there).
    palette = rng.sample(tuple(COLOURS), 2) if task == "count_colour" else tuple(COLOURS)
    dots = [rng.choice(palette) for _ in range(count)]
    for cell, colour in zip(cells[1:], dots, strict=True):
        draw_object(draw, cell, "circle", colour, rng.randint(7, 10), rng)
    asked = palette[0]
    answer = {
        "count": str(count),
        "count_colour": str(dots.count(asked)),
        "read": str(digit),
        "add": str(digit + count),
        "compare": "yes" if count > digit else "no",
    }[task]
    return Sample("math", image, MATH[task].format(colour=asked), answer, task)


def general_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """Two or three objects of distinct shapes and colours; one question of `tasks` about one."""
    task = rng.choice(tasks)
    n = rng.choice((2, 3))
    shapes, colours = rng.sample(SHAPES, n), rng.sample(tuple(COLOURS), n)
    cells = rng.sample(range(GRID * GRID), n)
    image, draw = _canvas()
    for cell, shape, colour in zip(cells, shapes, colours, strict=True):
        draw_object(draw, cell, shape, colour, rng.randint(10, 13), rng)
    which = rng.randrange(n)
    shape, colour = shapes[which], colours[which]
    answer = {
        "colour": colour,
        "shape": shape,
        "place": ROWS[cells[which] // GRID],
    }[task]
    return Sample("general", image, GENERAL[task].format(shape=shape, colour=colour), answer, task)


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
    _task_set("skills", ("count", "read", "add", "compare"), ("colour", "shape")),
    _task_set("skills-b", ("count", "count_colour", "read", "add"), ("colour", "shape", "place")),
)
#: The multi-skill task sets by name.
TASK_SETS: dict[str, TaskSet] = {s.name: s for s in _SETS}
