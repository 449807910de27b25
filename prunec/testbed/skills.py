"""Multi-skill synthetic tasks for the results testbeds, where pruning strategies separate.

The demo's tasks each need one skill, and a small model gets them 100% right. Here a math
question needs several: read a seven-segment digit, count dots, then add the two (or count the
dots of one colour). A general question asks about the big shape or the small one.

Layout: 48x48 pixels on a 3x3 grid of 16-pixel cells (one image token per cell). One big
object fills a 2x2 block of cells (4 of the 9 image tokens); small objects sit one per cell in
the 5 cells left. The big object matters for training time: a signal spread over several image
tokens is what a model trained from scratch learns to read first (small objects alone left a
16-layer model guessing after 1000 steps); the small ones then need attention to one token.

Two task mixes, so the two results testbeds differ in what they learn as well as in
architecture: `skills` (count, read, add; colour of the big shape, colour and kind of the
small one) and `skills-b` (count one colour, read, add; kind of the big shape, colour and row
of the small one).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from prunec.testbed.synth import Sample, TaskSet

IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID
#: The 2x2 blocks of cells a big object can fill (row-major cell indices), by top-left cell.
BLOCKS: dict[int, tuple[int, ...]] = {
    corner: tuple(corner + dr * GRID + dc for dr in (0, 1) for dc in (0, 1))
    for corner in (0, 1, GRID, GRID + 1)
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (150, 40, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
MAX_DOTS = GRID * GRID - len(BLOCKS[0])

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


def _box(
    corner: int, cells: int, width: int, height: int, rng: random.Random
) -> tuple[int, int, int, int]:
    """A `width` x `height` box in the `cells` x `cells` block whose top-left cell is `corner`,
    jittered by up to 2 pixels but inside the block (PIL boxes include both corners)."""
    row, col = divmod(corner, GRID)
    side = cells * CELL
    left, top = col * CELL, row * CELL
    x0 = left + (side - width) // 2 + rng.randint(-2, 2)
    y0 = top + (side - height) // 2 + rng.randint(-2, 2)
    x0 = min(max(x0, left), left + side - width)
    y0 = min(max(y0, top), top + side - height)
    return x0, y0, x0 + width - 1, y0 + height - 1


def draw_digit(draw: ImageDraw.ImageDraw, corner: int, digit: int, rng: random.Random) -> None:
    """A black 18x26 seven-segment `digit` in the 2x2 block at `corner`, jittered.

    One glyph size: telling the digits apart is then easy for the vision tower, so the few
    training minutes go to the decoder's part (combine four image tokens, then add or count).
    """
    width, height, t = 18, 26, 4
    x0, y0, x1, y1 = _box(corner, 2, width, height, rng)
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
    corner: int,
    cells: int,
    shape: str,
    colour: str,
    size: int,
    rng: random.Random,
) -> None:
    """A filled `shape` of `size` pixels in `colour`, in the block of `cells` x `cells` cells."""
    x0, y0, x1, y1 = _box(corner, cells, size, size, rng)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _layout(rng: random.Random) -> tuple[int, list[int]]:
    """A random 2x2 block (its top-left cell) and the cells outside it, shuffled."""
    corner = rng.choice(tuple(BLOCKS))
    free = [c for c in range(GRID * GRID) if c not in BLOCKS[corner]]
    rng.shuffle(free)
    return corner, free


def math_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """A big digit 0-9 and 1-5 small dots beside it; one question of `tasks` about them."""
    task = rng.choice(tasks)
    digit, count = rng.randint(0, 9), rng.randint(1, MAX_DOTS)
    corner, free = _layout(rng)
    image, draw = _canvas()
    draw_digit(draw, corner, digit, rng)
    # count_colour paints the dots in two colours and asks for one of them; elsewhere the
    # colours are a distraction.
    palette = rng.sample(tuple(COLOURS), 2) if task == "count_colour" else tuple(COLOURS)
    dots = [rng.choice(palette) for _ in range(count)]
    for cell, colour in zip(free, dots, strict=False):
        draw_object(draw, cell, 1, "circle", colour, rng.randint(7, 10), rng)
    asked = palette[0]
    answer = {
        "count": count,
        "count_colour": dots.count(asked),
        "read": digit,
        "add": digit + count,
    }[task]
    return Sample("math", image, MATH[task].format(colour=asked), str(answer), task)


def general_sample(tasks: tuple[str, ...], rng: random.Random) -> Sample:
    """A big shape and a small one of another kind and colour; one question of `tasks`."""
    task = rng.choice(tasks)
    corner, free = _layout(rng)
    (big, small), (big_colour, small_colour) = rng.sample(SHAPES, 2), rng.sample(tuple(COLOURS), 2)
    image, draw = _canvas()
    draw_object(draw, corner, 2, big, big_colour, rng.randint(24, 28), rng)
    draw_object(draw, free[0], 1, small, small_colour, rng.randint(9, 12), rng)
    answer = {
        "big_colour": big_colour,
        "big_shape": big,
        "small_colour": small_colour,
        "small_shape": small,
        "small_row": ROWS[free[0] // GRID],
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
    _task_set("skills", ("count", "read", "add"), ("big_colour", "small_colour", "small_shape")),
    _task_set(
        "skills-b", ("count_colour", "read", "add"), ("big_shape", "small_colour", "small_row")
    ),
)
#: The multi-skill task sets by name.
TASK_SETS: dict[str, TaskSet] = {s.name: s for s in _SETS}
