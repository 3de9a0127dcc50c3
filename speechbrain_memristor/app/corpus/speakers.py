"""Synthetic speakers: eSpeak NG accent x voice variant x speaking rate x pitch.

Each speaker gives one talk and is named like a TED talk (``MariaNovak_2011``). Dev and test
speakers use (accent, variant) pairs that no training speaker uses, so they are unseen voices.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from speechbrain_memristor.app.corpus.espeak import VoiceSettings


def _words(text: str) -> tuple[str, ...]:
    """Splits a space-separated word list."""
    return tuple(text.split())


ACCENTS = (
    "en-us",
    "en-us-nyc",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")

RATE_WPM = (145, 195)
PITCH = (35, 65)
PITCH_RANGE = (35, 75)
# Below eSpeak's default of 100 so that loud variants do not clip before level normalization.
VOLUME = 80

FIRST_NAMES = {
    "male": _words(
        "Aaron Ben Carlos David Ethan Felix George Hiro Ivan James Kofi Leo Marco Nikhil Omar "
        "Pablo Quentin Rafael Samuel Tom Umar Victor Wei Yusuf Zoran"
    ),
    "female": _words(
        "Amara Beth Chloe Dana Elena Fatima Grace Hana Ines Julia Kira Lena Maria Nadia Olga "
        "Priya Rosa Sofia Tara Uma Vera Wendy Yara Zoe"
    ),
}
LAST_NAMES = _words(
    "Adams Baker Chen Diaz Evans Fischer Garcia Hughes Ito Jensen Kim Lopez Moreau Novak Okafor "
    "Patel Quinn Rossi Silva Tanaka Ueda Varga Weber Xu Young Zimmer"
)
YEARS = (2006, 2007, 2008, 2009, 2010, 2011, 2012, 2013, 2014)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker and their talk.

    talk_id: TED-style talk name, also the STM speaker field and the SPHERE file stem.
    gender: "male" or "female" (from the voice variant).
    voice: eSpeak NG settings; loudness: linear gain applied after level normalization.
    """

    talk_id: str
    gender: str
    voice: VoiceSettings
    loudness: float


def _variant_gender(variant: str) -> str:
    return "female" if variant in FEMALE_VARIANTS else "male"


def make_speakers(
    talks_per_split: Mapping[str, int], rng: random.Random
) -> dict[str, list[Speaker]]:
    """Draws ``talks_per_split[split]`` speakers per split; names are unique.

    Splits other than "train" take distinct (accent, variant) pairs first; training speakers
    cycle through the remaining pairs, so held-out pairs never occur in training.
    """
    pairs = [(accent, variant) for accent in ACCENTS for variant in MALE_VARIANTS + FEMALE_VARIANTS]
    rng.shuffle(pairs)
    held_out = [split for split in talks_per_split if split != "train"]
    needed = sum(talks_per_split[split] for split in held_out)
    if needed >= len(pairs):
        raise ValueError(
            f"talks_per_split={dict(talks_per_split)} needs {needed} held-out voices but only "
            f"{len(pairs) - 1} are available; use fewer dev/test talks"
        )
    used_names: set[str] = set()
    speakers: dict[str, list[Speaker]] = {}
    next_pair = 0
    train_pairs = pairs[needed:]
    for split in held_out + (["train"] if "train" in talks_per_split else []):
        speakers[split] = []
        for index in range(talks_per_split[split]):
            if split == "train":
                accent, variant = train_pairs[index % len(train_pairs)]
            else:
                accent, variant = pairs[next_pair]
                next_pair += 1
            gender = _variant_gender(variant)
            talk_id = _unique_talk_id(gender, rng, used_names)
            voice = VoiceSettings(
                voice=f"{accent}+{variant}",
                rate=rng.randint(*RATE_WPM),
                pitch=rng.randint(*PITCH),
                pitch_range=rng.randint(*PITCH_RANGE),
                volume=VOLUME,
            )
            loudness = round(rng.uniform(0.6, 1.4), 3)
            speakers[split].append(Speaker(talk_id, gender, voice, loudness))
    return {split: speakers[split] for split in talks_per_split}


def _unique_talk_id(gender: str, rng: random.Random, used: set[str]) -> str:
    while True:
        first = FIRST_NAMES[gender][rng.randrange(len(FIRST_NAMES[gender]))]
        last = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
        talk_id = f"{first}{last}_{YEARS[rng.randrange(len(YEARS))]}"
        if talk_id not in used:
            used.add(talk_id)
            return talk_id
