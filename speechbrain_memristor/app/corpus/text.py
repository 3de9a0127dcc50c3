"""Deterministic TED-like English sentences from a small vocabulary (about 250 words,
few enough that a laptop-sized model hears each word often).

Sentences are lists of lower-case tokens written the TED-LIUM way: contractions are split
before the apostrophe (``it 's``, ``we 're``, ``don 't``). :func:`spoken_text` joins them back
for the synthesizer. Every choice comes from the ``random.Random`` passed in, so the same seed
gives the same sentences on any platform.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def _words(text: str) -> tuple[str, ...]:
    """Splits a space-separated word list."""
    return tuple(text.split())


NOUNS = _words(
    "world idea city people story problem question future planet brain child teacher school "
    "student water energy food money time year day life country family friend company computer "
    "machine robot data science design music language book picture ocean forest animal heart "
    "doctor home car light voice space climate island river market phone system project "
    "experiment model job video camera garden week history truth memory dream change team talk"
)

ADJECTIVES = _words(
    "new old big small good bad great simple hard important beautiful amazing different real "
    "human global young long deep open free strong happy huge modern"
)

ADVERBS = _words(
    "really actually just probably always never often sometimes suddenly slowly quickly"
)

# (base, past, present participle, past participle)
VERBS = (
    ("build", "built", "building", "built"),
    ("make", "made", "making", "made"),
    ("see", "saw", "seeing", "seen"),
    ("find", "found", "finding", "found"),
    ("change", "changed", "changing", "changed"),
    ("show", "showed", "showing", "shown"),
    ("tell", "told", "telling", "told"),
    ("give", "gave", "giving", "given"),
    ("take", "took", "taking", "taken"),
    ("bring", "brought", "bringing", "brought"),
    ("create", "created", "creating", "created"),
    ("discover", "discovered", "discovering", "discovered"),
    ("measure", "measured", "measuring", "measured"),
    ("design", "designed", "designing", "designed"),
    ("study", "studied", "studying", "studied"),
    ("understand", "understood", "understanding", "understood"),
    ("imagine", "imagined", "imagining", "imagined"),
    ("protect", "protected", "protecting", "protected"),
    ("grow", "grew", "growing", "grown"),
    ("fix", "fixed", "fixing", "fixed"),
)

SUBJECTS = ("i", "we", "you", "they", "people", "scientists", "kids", "my mother", "our team")
# Subject pronouns and the clitic forms TED-LIUM writes split off: ("we", "'re").
BE_CONTRACTIONS = (("i", "'m"), ("we", "'re"), ("you", "'re"), ("they", "'re"), ("it", "'s"))
HAVE_CONTRACTIONS = (("i", "'ve"), ("we", "'ve"), ("you", "'ve"), ("they", "'ve"))
WILL_CONTRACTIONS = (("i", "'ll"), ("we", "'ll"), ("you", "'ll"), ("they", "'ll"), ("it", "'ll"))
WOULD_CONTRACTIONS = (("i", "'d"), ("we", "'d"), ("you", "'d"), ("they", "'d"))
NEGATIONS = (("don", "'t"), ("can", "'t"), ("didn", "'t"), ("won", "'t"), ("doesn", "'t"))
DETERMINERS = _words("the a this that every our their your my one another")
PREPOSITIONS = _words("in on for with from about into around without under")
OPENERS = (
    "so",
    "and",
    "but",
    "now",
    "well",
    "you know",
    "in fact",
    "of course",
    "for example",
    "at the end of the day",
    "a few years ago",
    "ten years ago",
    "last year",
    "right now",
)
CONNECTORS = _words("and because but so when while until after before")
NUMBERS = _words("two three four five six seven eight nine ten twenty")
CLOSING = ("thank", "you")


def _choice(rng: random.Random, items: Sequence):
    return items[rng.randrange(len(items))]


def _noun_phrase(rng: random.Random) -> list[str]:
    words = [_choice(rng, DETERMINERS)]
    if rng.random() < 0.45:
        words.append(_choice(rng, ADJECTIVES))
    words.append(_choice(rng, NOUNS))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _object(rng: random.Random) -> list[str]:
    phrase = _noun_phrase(rng)
    if rng.random() < 0.35:
        phrase += [_choice(rng, PREPOSITIONS), *_noun_phrase(rng)]
    return phrase


def _clause(rng: random.Random) -> list[str]:
    verb = _choice(rng, VERBS)
    kind = rng.randrange(12)
    if kind == 0:
        return [*_choice(rng, SUBJECTS).split(), verb[1], *_object(rng)]
    if kind == 1:
        subject, clitic = _choice(rng, BE_CONTRACTIONS[:4])
        return [subject, clitic, verb[2], *_object(rng)]
    if kind == 2:
        return ["it", "'s", _choice(rng, ADJECTIVES), "to", verb[0], *_object(rng)]
    if kind == 3:
        subject = _choice(rng, ("i", "we", "you", "they"))
        negation = _choice(rng, NEGATIONS)
        return [subject, *negation, verb[0], *_object(rng)]
    if kind == 4:
        return ["there", "'s", *_noun_phrase(rng), _choice(rng, PREPOSITIONS), *_noun_phrase(rng)]
    if kind == 5:
        return ["what", "if", _choice(rng, ("we", "you", "they")), "could", verb[0], *_object(rng)]
    if kind == 6:
        return ["i", "'m", "going", "to", verb[0], "you", *_object(rng)]
    if kind == 7:
        return [*_noun_phrase(rng), "is", _choice(rng, ADVERBS), _choice(rng, ADJECTIVES)]
    if kind == 8:
        subject, clitic = _choice(rng, WILL_CONTRACTIONS)
        return [subject, clitic, verb[0], *_object(rng)]
    if kind == 9:
        subject, clitic = _choice(rng, HAVE_CONTRACTIONS)
        return [subject, clitic, _choice(rng, ADVERBS), verb[3], *_object(rng)]
    if kind == 10:
        subject, clitic = _choice(rng, WOULD_CONTRACTIONS)
        return [subject, clitic, "like", "to", verb[0], *_object(rng)]
    return ["we", verb[1], *_noun_phrase(rng), _choice(rng, NUMBERS), "times"]


def sentence(rng: random.Random) -> list[str]:
    """One TED-like sentence as TED-LIUM tokens (5 to about 20 tokens)."""
    words: list[str] = []
    if rng.random() < 0.3:
        words += _choice(rng, OPENERS).split()
    words += _clause(rng)
    if rng.random() < 0.2:
        words += [_choice(rng, CONNECTORS), *_clause(rng)]
    return words


def spoken_text(tokens: Sequence[str]) -> str:
    """Joins split contractions for the synthesizer: ``["it", "'s"]`` -> ``"it's"``."""
    text = " ".join(tokens)
    return text.replace(" '", "'")


def vocabulary() -> set[str]:
    """Every token :func:`sentence` and the closing phrase can produce."""
    words = set(NOUNS) | set(ADJECTIVES) | set(ADVERBS) | set(CLOSING)
    words |= {form for verb in VERBS for form in verb}
    words |= {word for phrase in SUBJECTS + OPENERS for word in phrase.split()}
    for pairs in (
        BE_CONTRACTIONS,
        HAVE_CONTRACTIONS,
        WILL_CONTRACTIONS,
        WOULD_CONTRACTIONS,
        NEGATIONS,
    ):
        words |= {word for pair in pairs for word in pair}
    words |= set(DETERMINERS) | set(PREPOSITIONS) | set(CONNECTORS) | set(NUMBERS)
    words |= {"an", "to", "there", "what", "if", "could", "going", "is", "like", "times"}
    return words
