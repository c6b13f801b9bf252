"""Procedurally generated TOFU-like facts about fictitious people.

Each entity (a made-up person) gets several attributes; every (entity, attribute) pair becomes one
question/answer pair. Names, cities and book titles are built from random syllables so that no
pre-trained model could know them; the answers are short value phrases (1-3 words) so the answer
probability measures knowledge of the fact rather than of a sentence template.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "kr", "dr", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m"]

OCCUPATIONS = [
    "baker",
    "glassblower",
    "cartographer",
    "astronomer",
    "beekeeper",
    "blacksmith",
    "botanist",
    "weaver",
    "lighthouse keeper",
    "clockmaker",
    "violin maker",
    "stone carver",
    "ship captain",
    "herbalist",
    "potter",
    "librarian",
    "perfumer",
    "tailor",
    "falconer",
    "mapmaker",
    "brewer",
    "jeweler",
    "archivist",
    "puppeteer",
]
COLORS = [
    "crimson",
    "teal",
    "amber",
    "violet",
    "ochre",
    "indigo",
    "scarlet",
    "olive",
    "silver",
    "coral",
    "ivory",
    "maroon",
    "turquoise",
    "saffron",
    "charcoal",
    "lavender",
]
PETS = [
    "cat",
    "parrot",
    "tortoise",
    "ferret",
    "goat",
    "owl",
    "hedgehog",
    "rabbit",
    "raven",
    "iguana",
    "donkey",
    "goldfish",
    "hamster",
    "peacock",
    "lizard",
    "fox",
]
INSTRUMENTS = [
    "harp",
    "cello",
    "flute",
    "lute",
    "oboe",
    "drum",
    "banjo",
    "trumpet",
    "zither",
    "accordion",
    "bagpipes",
    "clarinet",
    "sitar",
    "marimba",
]
_TITLE_ADJECTIVES = [
    "Silent",
    "Crimson",
    "Hollow",
    "Endless",
    "Broken",
    "Golden",
    "Distant",
    "Frozen",
    "Hidden",
    "Last",
]
_TITLE_NOUNS = [
    "River",
    "Tower",
    "Garden",
    "Lantern",
    "Harbor",
    "Mirror",
    "Orchard",
    "Bridge",
    "Compass",
    "Meadow",
]


@dataclass(frozen=True)
class Fact:
    """One question/answer pair about one entity."""

    entity: str
    attribute: str
    question: str
    answer: str


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _unique_words(rng: random.Random, n: int, syllables: Sequence[int], taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        word = _word(rng, rng.choice(list(syllables)))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


# attribute name -> (question template, value sampler). The sampler gets the rng and the shared pools.
_Sampler = Callable[[random.Random, dict[str, list[str]]], str]
ATTRIBUTES: dict[str, tuple[str, _Sampler]] = {
    "birthplace": ("Where was {name} born?", lambda r, p: r.choice(p["cities"])),
    "occupation": ("What does {name} do for a living?", lambda r, p: r.choice(OCCUPATIONS)),
    "birth_year": ("In which year was {name} born?", lambda r, p: str(r.randint(1901, 1999))),
    "color": ("What is the favorite color of {name}?", lambda r, p: r.choice(COLORS)),
    "pet": ("What kind of pet does {name} keep?", lambda r, p: f"{r.choice(COLORS)} {r.choice(PETS)}"),
    "book": (
        "What is the title of the book {name} wrote?",
        lambda r, p: f"The {r.choice(_TITLE_ADJECTIVES)} {r.choice(_TITLE_NOUNS)}",
    ),
    "mentor": ("Who was the mentor of {name}?", lambda r, p: r.choice(p["mentors"])),
    "instrument": ("Which instrument does {name} play?", lambda r, p: r.choice(INSTRUMENTS)),
}


def generate_facts(n_entities: int, n_attributes: int, seed: int = 0) -> list[Fact]:
    """Make ``n_entities`` fictitious people with ``n_attributes`` attributes each.

    Deterministic in ``seed``. Returns ``n_entities * n_attributes`` facts, grouped by entity.
    """
    if n_entities < 2:
        raise ValueError(f"n_entities must be >= 2, got {n_entities}")
    if not 1 <= n_attributes <= len(ATTRIBUTES):
        raise ValueError(f"n_attributes must be in [1, {len(ATTRIBUTES)}], got {n_attributes}")
    rng = random.Random(seed)
    taken: set[str] = set()
    pools = {
        "cities": _unique_words(rng, max(8, n_entities // 3), (2, 3), taken),
        "mentors": [
            f"{a} {b}"
            for a, b in zip(
                _unique_words(rng, 12, (2,), taken), _unique_words(rng, 12, (2,), taken), strict=True
            )
        ],
    }
    firsts = _unique_words(rng, n_entities, (2,), taken)
    lasts = _unique_words(rng, n_entities, (1, 2), taken)
    attributes = list(ATTRIBUTES)[:n_attributes]
    facts: list[Fact] = []
    for first, last in zip(firsts, lasts, strict=True):
        name = f"{first} {last}"
        for attribute in attributes:
            template, sampler = ATTRIBUTES[attribute]
            facts.append(Fact(name, attribute, template.format(name=name), sampler(rng, pools)))
    return facts


def split_by_entity(
    facts: Sequence[Fact], forget_fraction: float, seed: int = 0
) -> tuple[list[Fact], list[Fact]]:
    """Split facts into (forget, retain) so that every entity lies wholly on one side.

    At least one entity is forgotten and at least one retained.
    """
    if not 0.0 < forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}")
    entities = sorted({f.entity for f in facts})
    if len(entities) < 2:
        raise ValueError("need at least two entities to split by entity")
    n_forget = min(len(entities) - 1, max(1, round(forget_fraction * len(entities))))
    forget_entities = set(random.Random(seed).sample(entities, n_forget))
    forget = [f for f in facts if f.entity in forget_entities]
    retain = [f for f in facts if f.entity not in forget_entities]
    return forget, retain
