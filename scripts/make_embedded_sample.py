#!/usr/bin/env python
"""Build the sample that `sophiavl-verl audit` uses when it is given no input.

Writes ``sophiavl_verl/tools/embedded/groups.jsonl`` and ``sophiavl_verl/tools/embedded/images/*.png``:
32 questions of the paper's four task types (8 each), each with an image drawn here with Pillow and
8 responses in the ``<think>...</think><answer>...</answer>`` format:

* ``numerical``       -- a bar chart and an arithmetic question about the bars;
* ``multiple choice`` -- a geometry figure (triangle angles, rectangle area, right-triangle hypotenuse);
* ``OCR``             -- a rendered sign to transcribe;
* ``free-form``       -- a drawn scene to describe.

Every group follows one scenario (stored in the row as ``scenario``): ``mixed`` (correct and wrong
answers, sound and flawed reasoning), ``fluent_wrong`` (the wrong answers come with the longer, more
confident reasoning -- the case Trust-GRPO's trust weight exists for), ``careful_right`` (the correct
answers have the careful reasoning), ``mostly_correct``, ``all_correct``, ``all_wrong`` and
``malformed_mix`` (some responses break the required format). Each response's intended kind is
kept in ``response_kinds`` (``sound``, ``terse``, ``lucky`` = right answer from flawed reasoning,
``slip``, ``misread``, ``fluent`` = fluent reasoning to a wrong answer, ``malformed``) so a reader can
compare the thinking reward model's scores with what the response really is; the audit itself only
reads ``question``, ``images``, ``ground_truth``, ``problem_type`` and ``responses``.

Deterministic: fixed seeds and Pillow's built-in font, so a re-run rewrites identical files.
Usage: python scripts/make_embedded_sample.py [--out sophiavl_verl/tools/embedded]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 192
SEED = 20250522
N_PER_TYPE = 8
# The scenario of each of the 8 questions of a task type (see the module docstring).
SCENARIOS = {
    "numerical": ["mixed", "fluent_wrong", "careful_right", "all_correct", "fluent_wrong", "all_wrong",
                  "malformed_mix", "mostly_correct"],
    "multiple choice": ["fluent_wrong", "mixed", "all_correct", "careful_right", "all_wrong", "malformed_mix",
                        "mixed", "fluent_wrong"],
    "OCR": ["mixed", "careful_right", "fluent_wrong", "all_wrong", "malformed_mix", "mixed", "mostly_correct",
            "fluent_wrong"],
    "free-form": ["all_correct", "fluent_wrong", "careful_right", "malformed_mix", "mixed", "mostly_correct",
                  "fluent_wrong", "all_wrong"],
}
# Response kinds per scenario (8 each, the order they are written in; correct kinds first).
KINDS = {
    "mixed": ["sound", "sound", "terse", "lucky", "slip", "slip", "misread", "fluent"],
    "fluent_wrong": ["terse", "terse", "lucky", "fluent", "fluent", "fluent", "fluent", "fluent"],
    "all_correct": ["sound", "sound", "sound", "terse", "terse", "lucky", "lucky", "sound"],
    "all_wrong": ["slip", "slip", "misread", "misread", "fluent", "fluent", "slip", "misread"],
    "malformed_mix": ["sound", "terse", "lucky", "slip", "misread", "fluent", "malformed", "malformed"],
    "careful_right": ["sound", "sound", "sound", "sound", "slip", "misread", "misread", "slip"],
    "mostly_correct": ["sound", "sound", "terse", "terse", "lucky", "sound", "slip", "fluent"],
}
COLORS = {
    "red": (214, 64, 52), "blue": (52, 101, 196), "green": (60, 150, 72), "orange": (236, 140, 40),
    "purple": (130, 80, 170), "yellow": (240, 200, 40), "brown": (130, 85, 50), "gray": (120, 120, 120),
    "white": (250, 250, 250), "black": (20, 20, 20),
}


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def wrap(think: str, answer: str) -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def malformed(rng: random.Random, think: str, answer: str) -> str:
    """A response that breaks the required format in one of the ways policies actually do."""
    shape = rng.randrange(4)
    if shape == 0:
        return f"{think} The answer is {answer}."  # no tags at all
    if shape == 1:
        return f"<think>{think}</think>\nAnswer: {answer}"  # no <answer> tags
    if shape == 2:
        return f"<answer>{answer}</answer>"  # no reasoning block
    return f"<think>{think}\n<answer>{answer}</answer>"  # </think> never closed


SOUND_OPENERS = ["", "Let me look at the figure. ", "Looking at the image carefully. ", "First, the given values. "]
FLUENT_OPENERS = [
    "Let me analyze this carefully, step by step.",
    "I will work through this methodically.",
    "To answer precisely, I will break the problem into parts.",
    "Let me think about this systematically before answering.",
    "This needs careful reasoning, so I will go one step at a time.",
]
# Fluent wrong reasoning justifies itself; flawed-but-lucky reasoning admits it is guessing.
FLUENT_CLOSERS = [
    "Verification: repeating every step confirms {x}, because each one follows from the previous.",
    "Double-checking each step gives the same result, {x}, because nothing in the figure contradicts it.",
    "Everything is consistent with the figure, so I am confident in {x} because all the details agree.",
    "Re-examining the figure once more, no step needs revision: {x}, because the checks all pass.",
    "All the pieces fit together, which confirms {x} because the reasoning is complete.",
]
LUCKY_ADMISSIONS = [" This is a rough guess.", " I am mostly guessing here.", " Just a guess, though."]
SOUND_JUSTIFICATIONS = ["", " This is reliable because every value was read directly from the figure."]


def nth(pool: list, v: int):
    return pool[v % len(pool)]


def group_texts(kinds: list[str], render) -> list[str]:
    """Render each kind; ``v`` counts earlier responses of the same kind so repeats differ.

    Lucky responses admit they guess and every other sound one states why it is sure, as real ones do.
    """
    seen: dict[str, int] = {}
    out = []
    for k in kinds:
        v = seen.get(k, 0)
        seen[k] = v + 1
        text = render(k, v)
        extra = {"lucky": nth(LUCKY_ADMISSIONS, v), "sound": nth(SOUND_JUSTIFICATIONS, v)}.get(k, "")
        if extra and "</think>" in text:
            head, tail = text.split("</think>", 1)
            text = f"{head}{extra}</think>{tail}"
        out.append(text)
    return out


# --------------------------------------------------------------------------- numerical: bar charts

BAR_LABELS = ["A", "B", "C", "D", "E"]


def draw_bar_chart(values: dict[str, int], colour: str, title: str) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 28, SIZE - 8, 26, SIZE - 24
    vmax = 10
    d.text((SIZE // 2, 4), title, fill="black", font=font(12), anchor="mt")
    for v in range(0, vmax + 1, 2):
        y = bottom - (bottom - top) * v / vmax
        d.line([(left, y), (right, y)], fill=(225, 225, 225))
        d.text((left - 4, y), str(v), fill="black", font=font(10), anchor="rm")
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    slot = (right - left) / len(values)
    for i, (label, v) in enumerate(values.items()):
        x0 = left + i * slot + slot * 0.18
        x1 = left + (i + 1) * slot - slot * 0.18
        y = bottom - (bottom - top) * v / vmax
        d.rectangle([x0, y, x1, bottom], fill=COLORS[colour], outline="black")
        d.text(((x0 + x1) / 2, bottom + 4), label, fill="black", font=font(11), anchor="mt")
    return img


def bar_group(rng: random.Random, q: int, kinds: list[str]) -> tuple[Image.Image, dict]:
    values = {lab: rng.randint(2, 9) for lab in BAR_LABELS}
    colour = rng.choice(["blue", "green", "orange", "purple", "red"])
    title = rng.choice(["Books read per month", "Rainfall (cm)", "Sales per day", "Visitors (x100)"])
    img = draw_bar_chart(values, colour, title)
    reading = ", ".join(f"{k} = {v}" for k, v in values.items())
    qtype = q % 4
    hi = max(values, key=values.get)
    lo = min(values, key=values.get)
    if qtype == 0:
        x, y = rng.sample(BAR_LABELS, 2)
        question = f"What is the sum of the values of bars {x} and {y}?"
        ans = values[x] + values[y]
        task = f"add bars {x} and {y}"
        step = f"The question asks for {x} + {y}: {values[x]} + {values[y]} = {ans}."
        terse = [f"{x}={values[x]}, {y}={values[y]}, {values[x]}+{values[y]}={ans}.", f"{values[x]}+{values[y]}={ans}"]
        lucky = [f"Bar {x} looks like about {values[x] + 1} and bar {y} about {values[y] - 1}; "
                 f"{values[x] + 1} + {values[y] - 1} = {ans}.",
                 f"Both bars are medium height, together probably around {ans}."]
        mis = [(f"Bar {x} is {values[x]} and bar {y} reaches {values[y] + 1}, "
                f"so {values[x]} + {values[y] + 1} = {ans + 1}.", ans + 1),
               (f"Bar {x} is only {values[x] - 1}, bar {y} is {values[y]}, so the sum is {ans - 1}.", ans - 1)]
    elif qtype == 1:
        question = "How much greater is the tallest bar than the shortest bar?"
        ans = values[hi] - values[lo]
        task = "subtract the shortest bar from the tallest"
        step = (f"The tallest bar is {hi} ({values[hi]}) and the shortest is {lo} ({values[lo]}), "
                f"so {values[hi]} - {values[lo]} = {ans}.")
        terse = [f"max {values[hi]}, min {values[lo]}, difference {ans}.", f"{values[hi]}-{values[lo]}={ans}"]
        lucky = [f"The bars differ quite a bit; eyeballing the gap between the tallest and shortest, "
                 f"it is roughly {ans}.",
                 f"Tallest minus shortest, looks like about {ans} gridline units."]
        mis = [(f"The tallest bar {hi} is {values[hi]}; the shortest bar {lo} reaches {values[lo] + 1}, "
                f"so the difference is {ans - 1}.", ans - 1),
               (f"The tallest bar reaches {values[hi] + 1} and the shortest is {values[lo]}, "
                f"difference {ans + 1}.", ans + 1)]
    elif qtype == 2:
        question = "What is the total of all five bars?"
        ans = sum(values.values())
        task = "add up all five bars"
        step = f"Adding them up: {' + '.join(str(v) for v in values.values())} = {ans}."
        terse = [f"{'+'.join(str(v) for v in values.values())}={ans}.", f"sum = {ans}"]
        lucky = [f"Each bar is roughly {ans / 5:.1f} on average, and five bars times that is about {ans}.",
                 f"Five bars of around {round(ans / 5)} each, so about {ans}."]
        mis_vals = dict(values)
        mis_vals[lo] += 1
        mis = [(f"Reading the bars: {', '.join(f'{k} = {v}' for k, v in mis_vals.items())}. "
                f"The total is {ans + 1}.", ans + 1),
               (f"Reading the bars, but bar {hi} looks one unit lower than the line: the total is {ans - 1}.", ans - 1)]
    else:
        k = sorted(values.values())[2]
        question = f"How many bars have a value greater than {k}?"
        ans = sum(v > k for v in values.values())
        task = f"count the bars above {k}"
        above = [lab for lab, v in values.items() if v > k]
        step = f"Bars above {k}: {', '.join(above) if above else 'none'}. That is {ans} bar{'s' if ans != 1 else ''}."
        terse = [f"Above {k}: {' '.join(above) if above else 'none'} -> {ans}.", f"count = {ans}"]
        lucky = [f"About half of the bars look tall, so I'd say {ans}.", f"A couple of bars stick out, so {ans}."]
        ties = [lab for lab, v in values.items() if v == k]
        mis = [(f"Bars {', '.join(above + ties[:1])} are at or above the {k} line, "
                f"so {ans + 1} bars are greater than {k}.", ans + 1),
               (f"Only the very tallest bars count, so {max(ans - 1, 0)}.", max(ans - 1, 0))]
    slip_off = [1, -1, 2, -2]
    fluent_off = [1, -1, 2, 3, -2]

    def render(kind: str, v: int) -> str:
        if kind == "sound":
            return wrap(f"{nth(SOUND_OPENERS, v)}Reading each bar against the y-axis gridlines: {reading}. {step} "
                        f"So the answer is {ans}.", ans)
        if kind == "terse":
            return wrap(nth(terse, v), ans)
        if kind == "lucky":
            return wrap(nth(lucky, v), ans)
        if kind == "slip":
            wrong = ans + nth(slip_off, v)
            return wrap(f"Reading the bars: {reading}. I need to {task}. Computing, I get {wrong}.", wrong)
        if kind == "misread":
            text, wrong = nth(mis, v)
            return wrap(text, wrong)
        if kind == "fluent":
            wrong = ans + nth(fluent_off, v)
            return wrap(
                f"{nth(FLUENT_OPENERS, v)}\n"
                "1. The y-axis runs from 0 to 10 with gridlines every 2 units, so each bar can be read precisely.\n"
                f"2. Reading every bar against the nearest gridline: {reading}.\n"
                f"3. The question asks me to {task}. Carefully carrying out the arithmetic gives {wrong}.\n"
                f"4. {nth(FLUENT_CLOSERS, v).format(x=wrong)}",
                wrong,
            )
        return malformed(rng, f"Reading the bars: {reading}. {step}", ans)

    return img, {"question": question, "ground_truth": str(ans), "responses": group_texts(kinds, render)}


# ---------------------------------------------------------------- multiple choice: geometry figures


def label(d: ImageDraw.ImageDraw, xy, text: str, size: int = 12, colour="black") -> None:
    d.text(xy, text, fill=colour, font=font(size), anchor="mm")


def geometry_group(rng: random.Random, q: int, kinds: list[str]) -> tuple[Image.Image, dict]:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    shape = q % 3
    if shape == 0:  # triangle, two angles given
        a, b = rng.choice([(50, 60), (45, 75), (35, 85), (40, 70), (55, 65)])
        c = 180 - a - b
        pts = [(20, 160), (172, 160), (rng.randint(70, 120), 30)]
        d.polygon(pts, outline="black", width=2)
        label(d, (34, 148), f"{a}°", 11)
        label(d, (156, 148), f"{b}°", 11)
        label(d, (pts[2][0], pts[2][1] + 20), "?", 13, "red")
        for p, name in zip(pts, "ABC", strict=True):
            label(d, (p[0], p[1] + (14 if name != "C" else -12)), name, 13)
        question_stem = f"In triangle ABC, angle A = {a}° and angle B = {b}°. What is the measure of angle C?"
        unit = "°"
        correct, slip_v, fluent_v, mis_v = c, c + 10, c - 10, 180 - a
        sound = (f"The interior angles of a triangle add up to 180°. Angle A = {a}° and angle B = {b}°, "
                 f"so angle C = 180° - {a}° - {b}° = {c}°.")
        terse = f"180-{a}-{b}={c}."
        lucky = f"From the drawing, the top angle looks like roughly {c}°, so I pick that."
        slip = f"Angles sum to 180°. 180 - {a} = {180 - a}, and {180 - a} - {b} = {slip_v}."
        misread = f"Angle C is supplementary to angle A, so C = 180° - {a}° = {mis_v}°."
        fluent = (
            "To find angle C I will use the properties of triangles systematically.\n"
            f"First, the angle sum of any triangle is 180°. The given angles are A = {a}° and B = {b}°.\n"
            f"Second, the figure shows that side AC is slightly longer than BC, so C must be opposite the "
            f"longest side and is adjusted accordingly: 180° - {a}° - {b}° - 10° = {fluent_v}°.\n"
            f"Finally, checking: {a}° + {b}° + {fluent_v}° together with the correction term gives 180°, "
            "so the result is consistent."
        )
    elif shape == 1:  # rectangle area
        w, h = rng.choice([(8, 5), (9, 4), (7, 6), (12, 3), (6, 5)])
        x0, y0 = 30, 50
        x1, y1 = x0 + w * 11, y0 + h * 14
        d.rectangle([x0, y0, x1, y1], outline="black", width=2, fill=(235, 242, 255))
        label(d, ((x0 + x1) / 2, y1 + 12), f"{w} cm", 12)
        label(d, (x1 + 18, (y0 + y1) / 2), f"{h} cm", 12)
        question_stem = f"The rectangle has sides of {w} cm and {h} cm as labelled. What is its area?"
        unit = " cm²"
        correct, slip_v, fluent_v, mis_v = w * h, w * h + w, 2 * (w + h), w * h // 2 if (w * h) % 2 == 0 else w * h + h
        sound = f"The area of a rectangle is width times height: {w} cm × {h} cm = {w * h} cm²."
        terse = f"{w}×{h}={w * h}."
        lucky = f"The rectangle looks like it holds about {w * h} unit squares, so I'd go with {w * h}."
        slip = f"Area = {w} × {h}. {w} × {h} = {slip_v}."
        misread = (f"The diagonal splits it into two triangles, so the area is {w} × {h} / 2 = {mis_v}."
                   if mis_v == w * h // 2 else f"Area = ({w} + 1) × {h} = {mis_v}.")
        fluent = (
            "Let me work through this methodically.\n"
            f"The figure is a rectangle with one side labelled {w} cm and the adjacent side labelled {h} cm.\n"
            "To measure the region enclosed by the rectangle we need the total length of its boundary, "
            f"which is 2 × ({w} + {h}) = {2 * (w + h)}.\n"
            f"Double-checking: {w} + {h} + {w} + {h} = {2 * (w + h)}. Therefore the area is {fluent_v} cm²."
        )
    else:  # right triangle hypotenuse
        a, b = rng.choice([(3, 4), (6, 8), (5, 12), (9, 12), (8, 15)])
        c = int(math.hypot(a, b))
        scale = 120 / max(a, b)
        p0 = (30, 165)
        p1 = (30 + b * scale, 165)
        p2 = (30, 165 - a * scale)
        d.polygon([p0, p1, p2], outline="black", width=2, fill=(240, 250, 240))
        d.rectangle([p0[0], p0[1] - 10, p0[0] + 10, p0[1]], outline="black")
        label(d, (p0[0] - 12, (p0[1] + p2[1]) / 2), str(a), 12)
        label(d, ((p0[0] + p1[0]) / 2, p0[1] + 12), str(b), 12)
        label(d, ((p1[0] + p2[0]) / 2 + 10, (p1[1] + p2[1]) / 2 - 8), "x", 13, "red")
        question_stem = (f"In the right triangle shown, the legs are {a} and {b}. "
                         "What is the length x of the hypotenuse?")
        unit = ""
        correct, slip_v, fluent_v, mis_v = c, c + 1, a + b, c - 1
        sound = f"By the Pythagorean theorem, x² = {a}² + {b}² = {a * a} + {b * b} = {c * c}, so x = {c}."
        terse = f"sqrt({a * a}+{b * b})={c}."
        lucky = (f"It is a right triangle, and the hypotenuse is the longest side, so it should be a bit more "
                 f"than {b}; I'd guess {c}.")
        slip = f"x² = {a}² + {b}² = {a * a} + {b * b} = {(c + 1) ** 2}, so x = {slip_v}."
        misread = f"x² = {b}² - {a}²... no, x is the hypotenuse, roughly {mis_v} from the figure."
        fluent = (
            "This is a classic right-triangle problem, so let me reason carefully.\n"
            f"The two legs have lengths {a} and {b}, and the hypotenuse x connects their endpoints.\n"
            "Since the hypotenuse spans both legs, its length equals the combined length of the two legs: "
            f"x = {a} + {b} = {a + b}.\n"
            f"Sanity check: {a + b} is larger than both legs, as a hypotenuse must be. So x = {fluent_v}."
        )
    values = [correct, slip_v, fluent_v, mis_v]
    distinct: list[int] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    while len(distinct) < 4:
        distinct.append(distinct[-1] + 5)
    order = distinct[:]
    rng.shuffle(order)
    letters = "ABCD"
    letter_of = {v: letters[i] for i, v in enumerate(order)}
    options = "; ".join(f"{letters[i]}. {v}{unit}" for i, v in enumerate(order))
    question = f"{question_stem}\nOptions: {options}"
    gt = letter_of[correct]

    def pick(v: int) -> str:
        return letter_of.get(v, letters[(order.index(correct) + 1) % 4])

    def render(kind: str, v: int) -> str:
        if kind == "sound":
            return wrap(f"{nth(SOUND_OPENERS, v)}{sound} That is option {gt}.", gt)
        if kind == "terse":
            return wrap(f"{terse} {nth(['Option', 'So', 'Answer'], v)} {gt}.", gt)
        if kind == "lucky":
            return wrap(f"{lucky} {nth(['Option', 'Probably', 'I think'], v)} {gt}.", gt)
        if kind == "slip":
            return wrap(f"{nth(SOUND_OPENERS, v)}{slip} That matches option {pick(slip_v)}.", pick(slip_v))
        if kind == "misread":
            return wrap(f"{nth(['', 'Hmm. ', 'Looking again at the figure. '], v)}{misread} Option {pick(mis_v)}.",
                        pick(mis_v))
        if kind == "fluent":
            lines = fluent.split("\n")
            body = "\n".join([nth(FLUENT_OPENERS, v), *lines[1:]])
            closer = nth(FLUENT_CLOSERS, v).format(x=f"option {pick(fluent_v)}")
            return wrap(f"{body}\n{closer}", pick(fluent_v))
        return malformed(rng, f"{sound} That is option {gt}.", gt)

    return img, {"question": question, "ground_truth": gt, "responses": group_texts(kinds, render)}


# ------------------------------------------------------------------------------ OCR: rendered signs

PHRASES = [
    "FRESH BREAD BAKED DAILY", "NO PARKING AFTER MIDNIGHT", "PLATFORM FOUR TRAINS NORTH", "OPEN SEVEN DAYS WEEKLY",
    "MIND THE GAP PLEASE", "EXIT THROUGH GIFT SHOP", "KEEP THIS DOOR CLOSED", "SALE ENDS THIS FRIDAY",
]
CONFUSIONS = {"O": "0", "I": "1", "S": "5", "B": "8", "E": "F", "A": "4", "G": "C", "D": "O", "N": "M", "R": "P"}


def garble(word: str) -> str:
    for i, ch in enumerate(word):
        if ch in CONFUSIONS:
            return word[:i] + CONFUSIONS[ch] + word[i + 1:]
    return word + word[-1]


def ocr_group(rng: random.Random, q: int, kinds: list[str]) -> tuple[Image.Image, dict]:
    phrase = PHRASES[q]
    words = phrase.split()
    bg = rng.choice([(250, 244, 220), (225, 238, 250), (235, 250, 235), (250, 230, 230)])
    img = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(img)
    for _ in range(180):  # paper texture
        x, y = rng.randrange(SIZE), rng.randrange(SIZE)
        shade = rng.randint(-25, 0)
        d.point((x, y), fill=tuple(max(0, c + shade) for c in bg))
    d.rounded_rectangle([10, 40, SIZE - 10, SIZE - 40], radius=10, outline="black", width=3, fill=(255, 255, 255))
    lines = [" ".join(words[:2]), " ".join(words[2:])]
    ink = rng.choice(["black", "blue", "red", "green"])
    for i, line in enumerate(lines):
        d.text((SIZE // 2, 76 + i * 38), line, fill=COLORS[ink], font=font(19), anchor="mm")
    img = img.rotate(rng.uniform(-4, 4), resample=Image.BICUBIC, fillcolor=bg)
    question = "What text is written on the sign in the image? Transcribe it exactly."
    pool = [w for p in PHRASES for w in p.split() if w not in words]
    spelled = " ".join("-".join(w) for w in words)

    def render(kind: str, v: int) -> str:
        if kind == "sound":
            return wrap(f"{nth(SOUND_OPENERS, v)}The sign has two lines of capital letters. Line one: "
                        f"'{' '.join(words[:2])}'. Line two: '{' '.join(words[2:])}'. Read together: {phrase}.", phrase)
        if kind == "terse":
            return wrap(nth(["Two lines of text.", "Bold capitals on a white panel.", "Sign text."], v), phrase)
        if kind == "lucky":
            return wrap(nth([f"The letters are small and I cannot make all of them out, but signs like this usually "
                             f"say '{phrase}'.", f"I can only read '{words[0]}', so I guess the common phrase."], v),
                        phrase)
        if kind == "slip":  # OCR-style character confusions in three of the four words
            keep = v % len(words)
            got = " ".join(w if i == keep else garble(w) for i, w in enumerate(words))
            return wrap(f"Reading the letters one at a time: the sign says {got}.", got)
        if kind == "misread":
            got = " ".join([words[0], *rng.sample(pool, 3)])
            return wrap(f"The first word is clearly {words[0]}. The rest is partly hidden; it reads "
                        f"{' '.join(got.split()[1:])}.", got)
        if kind == "fluent":
            got = " ".join([words[0], *rng.sample(pool, 3)])
            return wrap(
                f"{nth(FLUENT_OPENERS, v)}\n"
                "The sign is a white rounded panel with a dark border; the text is set in bold capitals across two "
                "lines, slightly rotated.\n"
                f"Spelling out the first word: {'-'.join(words[0])}. The remaining letters, read in order, form "
                f"{' '.join(got.split()[1:])}, which also makes sense as a message on a public sign.\n"
                f"{nth(FLUENT_CLOSERS, v).format(x=got)}",
                got,
            )
        return malformed(rng, f"Spelled out: {spelled}.", phrase)

    return img, {"question": question, "ground_truth": phrase, "responses": group_texts(kinds, render)}


# ----------------------------------------------------------------------------- free-form: scenes


def draw_scene(spec: dict) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (180, 215, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 130, SIZE, SIZE], fill=(110, 175, 90))  # grass
    d.rectangle([0, 150, SIZE, 170], fill=(100, 100, 100))  # road
    for x in range(8, SIZE, 28):
        d.line([(x, 160), (x + 12, 160)], fill="white", width=2)
    if spec["sky"] == "sun":
        d.ellipse([140, 14, 176, 50], fill=COLORS["yellow"], outline=(230, 160, 20))
    else:
        for cx in (40, 120):
            d.ellipse([cx - 22, 20, cx + 22, 44], fill="white")
            d.ellipse([cx - 6, 12, cx + 30, 40], fill="white")
    hc = COLORS[spec["house"]]
    d.rectangle([18, 80, 82, 140], fill=hc, outline="black")
    d.polygon([(12, 82), (50, 50), (88, 82)], fill=COLORS[spec["roof"]], outline="black")
    d.rectangle([42, 108, 58, 140], fill=COLORS["brown"], outline="black")
    d.rectangle([24, 92, 36, 104], fill=(200, 230, 255), outline="black")
    d.rectangle([64, 92, 76, 104], fill=(200, 230, 255), outline="black")
    d.rectangle([118, 100, 128, 140], fill=COLORS["brown"])  # tree
    d.ellipse([98, 62, 148, 112], fill=(40, 120, 50), outline="black")
    cc = COLORS[spec["car"]]
    d.rounded_rectangle([100, 146, 170, 162], radius=4, fill=cc, outline="black")
    d.polygon([(112, 146), (120, 134), (148, 134), (158, 146)], fill=cc, outline="black")
    d.ellipse([108, 156, 122, 170], fill="black")
    d.ellipse([148, 156, 162, 170], fill="black")
    return img


def scene_group(rng: random.Random, q: int, kinds: list[str]) -> tuple[Image.Image, dict]:
    spec = {
        "house": rng.choice(["red", "blue", "yellow", "white", "orange"]),
        "roof": rng.choice(["brown", "gray", "black", "red"]),
        "car": rng.choice(["red", "blue", "green", "purple", "orange"]),
        "sky": rng.choice(["sun", "clouds"]),
    }
    if spec["roof"] == spec["house"]:
        spec["roof"] = "brown"
    img = draw_scene(spec)
    sky = "a yellow sun shines in the blue sky" if spec["sky"] == "sun" else "white clouds float in the blue sky"
    gt = (f"A {spec['house']} house with a {spec['roof']} roof stands on the grass next to a green tree. "
          f"A {spec['car']} car is driving on the road in front, and {sky}.")
    question = "What are the key elements in this picture? Describe them in one or two sentences."
    sky_short = "there is a yellow sun" if spec["sky"] == "sun" else "there are white clouds"
    wrong_houses = [c for c in ("green", "purple", "gray", "pink") if c != spec["house"]]
    wrong_things = ["bicycle", "truck", "bus", "tractor", "motorbike"]
    wrong_skies = ["it is night with a bright moon", "the sun is setting behind hills", "it is snowing heavily",
                   "a rainbow arcs over the hills", "dark storm clouds gather"]
    animals = ["a dog rests on the path", "two ducks swim in a pond", "a cat sits on the fence",
               "a horse grazes in a field", "birds circle above the roof"]
    right_answers = [
        gt,
        f"A {spec['house']} house with a {spec['roof']} roof next to a green tree, a {spec['car']} car on the road "
        f"in front, and {sky}.",
        f"A {spec['house']} house with a {spec['roof']} roof stands next to a green tree, and a {spec['car']} car is "
        f"on the road in front; {sky}.",
    ]

    def render(kind: str, v: int) -> str:
        if kind == "sound":
            return wrap(
                f"{nth(SOUND_OPENERS, v)}I see a house on the left: the walls are {spec['house']} and the roof is "
                f"{spec['roof']}. A green tree stands to its right. On the road in front there is a {spec['car']} "
                f"car. In the sky, {sky_short}.",
                nth(right_answers, v),
            )
        if kind == "terse":
            return wrap(nth(["House, tree, car, sky.", "Main objects: house, tree, car."], v),
                        nth(right_answers, v + 1))
        if kind == "lucky":
            return wrap(nth(["Pictures like this usually show a house, a tree and a car, so I will describe those.",
                             "Typical suburban drawing."], v), nth(right_answers, v + 2))
        if kind == "slip":
            house, thing = nth(wrong_houses, v), nth(wrong_things, v)
            return wrap(f"There is a {house} building and a {thing}.",
                        f"A {house} building and a {thing} parked near a fence.")
        if kind == "misread":
            return wrap(nth(["I can see a shop and some people.", "It looks like a harbour."], v),
                        nth(["Some people are walking past a small shop with a striped awning on a busy street.",
                             "Boats are moored in a small harbour beside a lighthouse."], v))
        if kind == "fluent":
            house, thing = nth(wrong_houses, v), nth(wrong_things, v + 1)
            sky_w, animal = nth(wrong_skies, v), nth(animals, v)
            return wrap(
                f"{nth(FLUENT_OPENERS, v)} I will describe the scene from background to foreground.\n"
                f"Background: the sky dominates the upper part of the image; {sky_w}, giving the scene its mood.\n"
                f"Middle ground: a {house} cottage with a chimney sits beside a tall pine and a wooden fence.\n"
                f"Foreground: a {thing} stands by the fence while {animal}.\n"
                "Together these elements compose a peaceful countryside scene. "
                f"{nth(FLUENT_CLOSERS, v).format(x='this description')}",
                f"A countryside scene: a {house} cottage beside a pine tree and a fence, a {thing} in front, "
                f"{animal}, and {sky_w}.",
            )
        return malformed(rng, "A house, a tree and a car.", gt)

    return img, {"question": question, "ground_truth": gt, "responses": group_texts(kinds, render)}


TASKS = [
    ("numerical", "bar", bar_group),
    ("multiple choice", "geometry", geometry_group),
    ("OCR", "sign", ocr_group),
    ("free-form", "scene", scene_group),
]


def build(out: Path) -> list[dict]:
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.glob("*.png"):
        old.unlink()
    rows = []
    for t, (ptype, stem, make) in enumerate(TASKS):
        for q in range(N_PER_TYPE):
            rng = random.Random(SEED * 100 + t * 10 + q)
            scenario = SCENARIOS[ptype][q]
            kinds = list(KINDS[scenario])
            img, row = make(rng, q, kinds)
            order = list(range(len(kinds)))
            rng.shuffle(order)  # responses of a real group come in no particular order
            name = f"{stem}_{q:02d}.png"
            img.save(images_dir / name, optimize=True)
            rows.append({
                "id": f"{stem}_{q:02d}",
                "problem_type": ptype,
                "question": row["question"],
                "images": [f"images/{name}"],
                "ground_truth": row["ground_truth"],
                "scenario": scenario,
                "responses": [row["responses"][i] for i in order],
                "response_kinds": [kinds[i] for i in order],
            })
    with open(out / "groups.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def main() -> None:
    default = Path(__file__).resolve().parent.parent / "sophiavl_verl" / "tools" / "embedded"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default, help=f"output folder (default {default})")
    args = ap.parse_args()
    rows = build(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(rows)} groups x {len(rows[0]['responses'])} responses to {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
