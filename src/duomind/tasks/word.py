"""Word problems (`word`): GSM8K-like templates over money, rates, sharing, ages, work and comparison.

Every template writes its numbers as digits and records each calculation as a step `a op b = c`,
so every step uses only numbers from the prompt or from earlier steps. Higher levels add clauses
(more steps) and use larger numbers.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable

from duomind.tasks.record import Task

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}

NAMES = ("Ann", "Ben", "Cal", "Dan", "Eva", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lee", "Mia", "Ned")
ITEMS = ("pens", "books", "cups", "hats", "toys", "cards", "plates", "bags")
FRUIT = ("apples", "pears", "sweets", "stickers", "marbles", "shells")
JOBS = (("packs", "boxes"), ("bakes", "cakes"), ("paints", "plates"), ("sews", "hats"))
VEHICLES = ("car", "bus", "train", "bike", "boat")


class _Work:
    """Collects the worked steps while computing them."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def op(self, a: int, sym: str, b: int, label: str = "") -> int:
        assert sym != "/" or a % b == 0, "templates must only divide exactly"
        r = _APPLY[sym](a, b)
        self.steps.append(f"{label}: {a} {sym} {b} = {r}" if label else f"{a} {sym} {b} = {r}")
        return r

    def total(self, values: list[int]) -> int:
        acc = values[0]
        for v in values[1:]:
            acc = self.op(acc, "+", v)
        return acc


def _hi(d: int) -> int:
    return (10, 20, 50, 100, 500)[d - 1]


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def shopping(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    name = rng.choice(NAMES)
    buys = [
        (rng.randint(2, 4 + d), item, rng.randint(1, _hi(d)))
        for item in rng.sample(ITEMS, (1, 2, 2, 3, 3)[d - 1])
    ]
    what = _listing([f"{q} {item} at ${p} each" for q, item, p in buys])
    total = w.total([w.op(q, "*", p) for q, _, p in buys])
    if d >= 3 and rng.random() < 0.5:
        unit = 10 ** max(1, len(str(total)) - 1)
        bill = (total // unit + 1) * unit
        change = w.op(bill, "-", total)
        return f"{name} buys {what} and pays with ${bill}. How much change does {name} get?", change
    return f"{name} buys {what}. How much does {name} spend?", total


def savings(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    name, weeks = rng.choice(NAMES), rng.randint(2, 4 + 2 * d)
    save, has = rng.randint(2, _hi(d)), rng.randint(5, 2 * _hi(d))
    if d == 1:
        saved = w.op(save, "*", weeks)
        return f"{name} saves ${save} a week. How much does {name} save in {weeks} weeks?", saved
    if d <= 3:
        now = w.op(has, "+", w.op(save, "*", weeks))
        text = f"{name} has ${has} and saves ${save} a week."
        if d == 2:
            return f"{text} How much does {name} have after {weeks} weeks?", now
        spend = rng.randint(1, now - 1)
        return f"{text} After {weeks} weeks {name} spends ${spend}. How much is left?", w.op(now, "-", spend)
    if d == 4:
        goal = has + save * weeks
        text = f"{name} has ${has} and saves ${save} a week. How many weeks until {name} has ${goal}?"
        return text, w.op(w.op(goal, "-", has), "/", save)
    earn = save + rng.randint(2, _hi(d))
    goal = has + save * weeks
    text = f"{name} has ${has}, earns ${earn} and spends ${earn - save} a week. How many weeks until {name} has ${goal}?"
    net = w.op(earn, "-", earn - save)
    return text, w.op(w.op(goal, "-", has), "/", net)


def travel(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    vehicle = rng.choice(VEHICLES)
    top = (10, 30, 60, 90, 120)[d - 1]  # plausible speeds; higher levels add legs instead
    legs = [(rng.randint(2, top), rng.randint(2, 3 + d)) for _ in range((1, 1, 2, 2, 3)[d - 1])]
    if d == 2 and rng.random() < 0.5:
        ((speed, hours),) = legs
        text = f"A {vehicle} goes {speed * hours} km at {speed} km per hour. How many hours does it take?"
        return text, w.op(speed * hours, "/", speed)
    parts = _listing([f"{v} km per hour for {h} hours" for v, h in legs]).replace(" and ", ", then ")
    dist = w.total([w.op(v, "*", h) for v, h in legs])
    if d >= 4:
        trip = dist + rng.randint(5, top * 5)
        text = f"A {vehicle} on a {trip} km trip goes {parts}. How many km are left?"
        return text, w.op(trip, "-", dist)
    return f"A {vehicle} goes {parts}. How many km does it go?", dist


def reading(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    name, rate, days = rng.choice(NAMES), rng.randint(2, _hi(d)), rng.randint(2, 3 + 2 * d)
    if d == 1:
        pages = w.op(rate, "*", days)
        return f"{name} reads {rate} pages a day. How many pages does {name} read in {days} days?", pages
    done = rng.randint(3, 2 * _hi(d)) if d in (3, 5) else 0
    if d <= 3:
        pages = rate * days + done
        read = f" {name} has read {done} pages and reads" if done else f" {name} reads"
        more = " more" if done else ""
        text = f"A book has {pages} pages.{read} {rate} pages a day. How many{more} days to finish it?"
        left = w.op(pages, "-", done) if done else pages
        return text, w.op(left, "/", rate)
    first, later = rng.randint(2, 5), rng.randint(2, _hi(d))
    pages = done + rate * first + later * days
    start = f" {name} has read {done} pages, then reads" if done else f" {name} reads"
    text = f"A book has {pages} pages.{start} {rate} a day for {first} days, then {later} a day. How many days in all?"
    read = w.op(rate, "*", first)
    if done:
        read = w.op(done, "+", read)
    return text, w.op(w.op(w.op(pages, "-", read), "/", later), "+", first)


def sharing(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    name, item, friends = rng.choice(NAMES), rng.choice(FRUIT), rng.randint(2, 3 + d)
    ask = " How many does each friend get?"
    if d == 1:
        total = friends * rng.randint(2, _hi(d))
        each = w.op(total, "/", friends)
        return f"{name} shares {total} {item} equally among {friends} friends.{ask}", each
    if d == 2:
        keep = rng.randint(1, _hi(d))
        total = friends * rng.randint(2, _hi(d)) + keep
        text = (
            f"{name} has {total} {item}, keeps {keep}, and shares the rest equally among {friends} friends."
        )
        return text + ask, w.op(w.op(total, "-", keep), "/", friends)
    bags, per = rng.randint(2, 9), rng.randint(friends + 2, max(friends + 2, _hi(d)))
    total = w.op(bags, "*", per)
    keep = total % friends or friends  # leaves a positive multiple of `friends`, at least 2 each
    text = f"{name} buys {bags} bags of {per} {item}, keeps {keep}, and shares the rest equally among {friends} friends."
    each = w.op(w.op(total, "-", keep), "/", friends)
    if d < 5:
        return text + ask, each
    eat = rng.randint(1, each - 1)
    return f"{text} Each friend eats {eat}. How many does each friend have left?", w.op(each, "-", eat)


def _chain(
    rng: random.Random,
    w: _Work,
    people: tuple[str, ...],
    start: int,
    limit: int,
    noun: tuple[str, str, str, str],
) -> tuple[list[str], list[int]]:
    """Relate each person to the previous one (more, fewer, times); returns sentences and values.

    `noun` words the relations: (verb, more-phrase, fewer-phrase, times-phrase).
    """
    values, sentences = [start], []
    for prev, cur in zip(people, people[1:]):
        v = values[-1]
        # Every value stays within 2..limit, so ages and counts stay plausible.
        kinds = ["more"] * (v + 2 <= limit) + ["fewer"] * (v > 3) + ["times"] * (2 * v <= limit)
        kind = rng.choice(kinds)
        if kind == "more":
            k = rng.randint(2, max(2, min(limit // 4, limit - v)))
            sentences.append(f"{cur} {noun[0]} {k} {noun[1]} than {prev}.")
            values.append(w.op(v, "+", k, cur))
        elif kind == "fewer":
            k = rng.randint(1, v - 2)
            sentences.append(f"{cur} {noun[0]} {k} {noun[2]} than {prev}.")
            values.append(w.op(v, "-", k, cur))
        else:
            k = rng.randint(2, max(2, min(5, limit // v)))
            sentences.append(f"{cur} {noun[0]} {k} times {noun[3]} {prev}.")
            values.append(w.op(v, "*", k, cur))
    return sentences, values


def ages(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    relations, future = ((1, False), (1, True), (2, False), (2, True), (3, True))[d - 1]
    people = tuple(rng.sample(NAMES, relations + 1))
    start = rng.randint(3, 5 + 5 * d)
    noun = ("is", "years older", "years younger", "as old as")
    sentences, values = _chain(rng, w, people, start, 90, noun)
    text = " ".join([f"{people[0]} is {start}."] + sentences)
    if future:
        years = rng.randint(2, 5 + 5 * d)
        return f"{text} How old will {people[-1]} be in {years} years?", w.op(values[-1], "+", years)
    return f"{text} How old is {people[-1]}?", values[-1]


def compare(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    item = rng.choice(FRUIT)
    relations, ask = ((1, "one"), (1, "total"), (2, "diff"), (2, "total"), (3, "total"))[d - 1]
    people = tuple(rng.sample(NAMES, relations + 1))
    start = rng.randint(4, _hi(d))
    sentences, values = _chain(rng, w, people, start, 4 * _hi(d), ("has", "more", "fewer", "as many as"))
    text = " ".join([f"{people[0]} has {start} {item}."] + sentences)
    if ask == "one":
        return f"{text} How many {item} does {people[-1]} have?", values[-1]
    if ask == "diff" and values[0] != values[-1]:
        (lo, a), (hi, b) = sorted([(values[0], people[0]), (values[-1], people[-1])])
        return f"{text} How many more {item} does {b} have than {a}?", w.op(hi, "-", lo)
    return f"{text} How many {item} do they have in all?", w.total(values)


def work(rng: random.Random, d: int, w: _Work) -> tuple[str, int]:
    verb, noun = rng.choice(JOBS)
    people = rng.sample(NAMES, (1, 1, 2, 2, 3)[d - 1])
    rates = [rng.randint(2, _hi(d)) for _ in people]
    hours = rng.randint(2, 3 + d)
    who = _listing([f"{p} {verb} {r}" for p, r in zip(people, rates)])
    subject, together = ("do they", " together") if len(people) > 1 else (f"does {people[0]}", "")
    text = f"{who} {noun} an hour."
    if d == 1 or (d in (3, 4) and rng.random() < 0.5):
        question = f"How many {noun} {subject} make{together} in {hours} hours?"
        return f"{text} {question}", w.op(w.total(rates), "*", hours)
    done = rng.randint(2, 2 * _hi(d)) if d == 5 else 0
    goal = sum(rates) * hours + done
    rate = w.total(rates)
    ready = f" {done} are already made." if done else ""
    left = w.op(goal, "-", done) if done else goal
    return f"{text}{ready} How many hours {subject} need{together} for {goal} {noun}?", w.op(left, "/", rate)


TEMPLATES: dict[str, Callable[[random.Random, int, _Work], tuple[str, int]]] = {
    "shopping": shopping,
    "savings": savings,
    "travel": travel,
    "reading": reading,
    "sharing": sharing,
    "ages": ages,
    "compare": compare,
    "work": work,
}


def word(rng: random.Random, difficulty: int) -> Task:
    """A word problem from a random template; the answer is a non-negative integer."""
    w = _Work()
    prompt, answer = TEMPLATES[rng.choice(tuple(TEMPLATES))](rng, difficulty, w)
    return Task("word", difficulty, prompt, str(answer), tuple(w.steps))
