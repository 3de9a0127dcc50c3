"""Data preparation for TED-LIUM release 2 (and the synthetic corpus of ``make-corpus``).

Reads ``TEDLIUM_release2/<split>/{sph,stm}/<talk>.{sph,stm}``, cuts every talk into utterances
by its STM times, writes them as 16 kHz wav files and lists them in SpeechBrain CSVs with the
columns ``ID, duration, wav, spk_id, wrd``:

- ``ID``: ``<talk>-<start>-<end>`` with STM times in centiseconds (``AlGore_2009-0001533-0002148``)
- ``duration``: seconds of audio in the wav file
- ``wav``: absolute path of the wav file
- ``spk_id``: the STM speaker field (the talk name in TED-LIUM)
- ``wrd``: the normalized transcript

Segments are skipped when their text is ``ignore_time_segment_in_scoring``, when they are
shorter than ``min_duration`` seconds, when nothing is left after normalization, when they repeat
an earlier segment's times, or when they start after the end of the audio.

Transcript normalization (the same rules Kaldi, ESPnet and SpeechBrain's TED-LIUM recipes apply,
so WERs compare with the literature and a character or BPE model emits plain English spelling):

1. Lower case.
2. Pronunciation-variant markers are removed: ``the(2)`` -> ``the``.
3. Tags are removed: ``<sil>``, ``<unk>``, noise tags such as ``{NOISE}`` or ``{BREATH}``, and
   any other token wrapped in ``<>``, ``{}`` or ``[]``.
4. Split contractions are joined to the previous word: ``it 's`` -> ``it's``,
   ``don 't`` -> ``don't`` (clitics ``'s 're 've 'll 'd 'm 't``).
5. Whitespace is collapsed to single spaces.

Usage from a recipe::

    from tedlium2_prepare import prepare_tedlium2
    csv_files = prepare_tedlium2(data_folder="data/TEDLIUM_release2", save_folder="results/prepared")
    # csv_files == {"train": ".../train.csv", "dev": ".../dev.csv", "test": ".../test.csv"}

or from a shell: ``python tedlium2_prepare.py DATA_FOLDER SAVE_FOLDER``.

Work already done is skipped: next to each CSV, ``<split>.prepare.json`` records the options and
a fingerprint of the split's STM and SPH files; a split whose record matches is not redone.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CSV_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd")
SAMPLE_RATE = 16000
IGNORE_TEXT = "ignore_time_segment_in_scoring"
CLITICS = frozenset({"'s", "'re", "'ve", "'ll", "'d", "'m", "'t"})
PREPARE_VERSION = 1  # bump when the output for the same input changes

_VARIANT_MARKER = re.compile(r"\(\d+\)$")
_TAG = re.compile(r"^(<[^>]*>|\{[^}]*\}|\[[^\]]*\])$")


@dataclass(frozen=True)
class StmSegment:
    """One STM line: times in seconds, text as written in the file."""

    talk: str
    speaker: str
    start: float
    end: float
    label: str
    text: str


def normalize_transcript(text: str) -> str:
    """Applies the normalization rules of the module docstring; returns "" if nothing is left."""
    words: list[str] = []
    for token in text.split():
        if _TAG.match(token):
            continue
        word = _VARIANT_MARKER.sub("", token.lower())
        if not word:
            continue
        if word in CLITICS and words:
            words[-1] += word
        else:
            words.append(word)
    return " ".join(words)


def read_stm(path: str | os.PathLike) -> list[StmSegment]:
    """Parses an STM file; blank lines and ``;;`` comments are skipped.

    Raises ValueError naming the file and line for a line that is not
    ``<talk> <channel> <speaker> <start> <end> <label> [words...]``.
    """
    segments = []
    with open(path, encoding="utf-8") as stm:
        for number, line in enumerate(stm, start=1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            try:
                if len(fields) < 6:
                    raise ValueError("fewer than 6 fields")
                start, end = float(fields[3]), float(fields[4])
            except ValueError as error:
                raise ValueError(
                    f"{path}:{number}: cannot parse STM line {line.strip()!r} ({error}); expected "
                    "'<talk> <channel> <speaker> <start> <end> <label> <words...>'"
                ) from error
            segments.append(
                StmSegment(fields[0], fields[2], start, end, fields[5], " ".join(fields[6:]))
            )
    return segments


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads a mono 16 kHz SPHERE (or any soundfile-readable) file as int16 samples.

    Raises RuntimeError naming the file if it cannot be read, is truncated, or is not
    mono 16 kHz.
    """
    try:
        samples, sample_rate = soundfile.read(path, dtype="int16", always_2d=True)
    except (RuntimeError, OSError) as error:
        raise RuntimeError(f"cannot read audio file {path}: {error}") from error
    declared = _sphere_sample_count(path)
    if declared is not None and declared != len(samples):
        raise RuntimeError(
            f"audio file {path} is truncated or corrupt: its SPHERE header declares {declared} "
            f"samples but {len(samples)} could be read"
        )
    if sample_rate != SAMPLE_RATE or samples.shape[1] != 1:
        raise RuntimeError(
            f"audio file {path} has {samples.shape[1]} channel(s) at {sample_rate} Hz; "
            f"TED-LIUM audio must be mono at {SAMPLE_RATE} Hz"
        )
    return samples[:, 0]


def _sphere_sample_count(path: str | os.PathLike) -> int | None:
    """The ``sample_count`` a NIST SPHERE header declares, or None for other files."""
    with open(path, "rb") as audio:
        header = audio.read(1024)
    if not header.startswith(b"NIST_1A"):
        return None
    match = re.search(rb"\nsample_count -i (\d+)", header)
    return int(match.group(1)) if match else None


def _split_fingerprint(split_folder: Path, stm_files: list[Path]) -> str:
    """Hash of the split's STM contents and SPH names and sizes (detects a changed corpus)."""
    digest = hashlib.sha256()
    for stm in stm_files:
        sph = split_folder / "sph" / f"{stm.stem}.sph"
        digest.update(f"{stm.name}\0{sph.stat().st_size}\0".encode())
        digest.update(stm.read_bytes())
    return digest.hexdigest()


def _talk_files(data_folder: Path, split: str) -> list[Path]:
    """The split's STM files, after checking the layout and that every STM has its SPH."""
    split_folder = data_folder / split
    for folder in (split_folder, split_folder / "stm", split_folder / "sph"):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"missing folder {folder}: data_folder must be a TEDLIUM_release2 folder with "
                f"{split}/sph/<talk>.sph and {split}/stm/<talk>.stm"
            )
    stm_files = sorted((split_folder / "stm").glob("*.stm"))
    if not stm_files:
        raise FileNotFoundError(f"no .stm files in {split_folder / 'stm'}")
    missing = [stm for stm in stm_files if not (split_folder / "sph" / f"{stm.stem}.sph").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} STM file(s) have no audio, e.g. {missing[0]} needs "
            f"{split_folder / 'sph' / (missing[0].stem + '.sph')}"
        )
    orphans = {sph.stem for sph in (split_folder / "sph").glob("*.sph")} - {
        stm.stem for stm in stm_files
    }
    if orphans:
        logger.warning("%s: %d SPH file(s) without STM are ignored", split, len(orphans))
    return stm_files


def _write_wav_atomically(path: Path, samples: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp")
    soundfile.write(temporary, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    os.replace(temporary, path)


def _prepare_split(
    data_folder: Path, save_folder: Path, split: str, stm_files: list[Path], min_duration: float
) -> dict:
    """Cuts one split's talks into wav files and writes its CSV; returns counts and hours."""
    wav_folder = save_folder / "wav" / split
    partial_folder = save_folder / "wav" / f"{split}.partial"
    shutil.rmtree(partial_folder, ignore_errors=True)
    partial_folder.mkdir(parents=True)
    rows: list[tuple[str, str, str, str, str]] = []
    skipped: Counter[str] = Counter()
    seconds = 0.0
    for stm in stm_files:
        segments = read_stm(stm)
        audio = read_audio(data_folder / split / "sph" / f"{stm.stem}.sph")
        seen_ids: set[str] = set()
        for segment in segments:
            if segment.text == IGNORE_TEXT:
                skipped["ignore_time_segment_in_scoring"] += 1
                continue
            utterance_id = (
                f"{segment.talk}-{round(segment.start * 100):07d}-{round(segment.end * 100):07d}"
            )
            if utterance_id in seen_ids:
                skipped["duplicate"] += 1
                continue
            seen_ids.add(utterance_id)
            first = max(0, round(segment.start * SAMPLE_RATE))
            last = min(round(segment.end * SAMPLE_RATE), len(audio))
            if first >= len(audio):
                skipped["outside_audio"] += 1
                logger.warning("%s: segment %s starts after the audio ends", stm, utterance_id)
                continue
            duration = max(0, last - first) / SAMPLE_RATE
            if duration < min_duration:
                skipped["too_short"] += 1
                continue
            words = normalize_transcript(segment.text)
            if not words:
                skipped["empty"] += 1
                continue
            _write_wav_atomically(partial_folder / f"{utterance_id}.wav", audio[first:last])
            wav_path = (wav_folder / f"{utterance_id}.wav").resolve()
            rows.append((utterance_id, f"{duration:.4f}", str(wav_path), segment.speaker, words))
            seconds += duration
    if not rows:
        raise ValueError(
            f"split {split!r} of {data_folder} has no usable segment (skipped: {dict(skipped)}); "
            f"check the STM files or lower min_duration={min_duration}"
        )
    shutil.rmtree(wav_folder, ignore_errors=True)
    os.replace(partial_folder, wav_folder)
    csv_path = save_folder / f"{split}.csv"
    temporary = csv_path.with_name(csv_path.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    os.replace(temporary, csv_path)
    return {"utterances": len(rows), "hours": round(seconds / 3600, 4), "skipped": dict(skipped)}


def _write_json_atomically(path: Path, content: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def prepare_tedlium2(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    min_duration: float = 1.0,
    skip_prep: bool = False,
) -> dict[str, str]:
    """Prepares TED-LIUM 2 CSVs and utterance wav files; returns {split: csv path}.

    Arguments
    ---------
    data_folder: the ``TEDLIUM_release2`` folder (with ``<split>/sph`` and ``<split>/stm``).
    save_folder: where ``<split>.csv``, ``<split>.prepare.json`` and ``wav/<split>/`` go.
    splits: which splits to prepare.
    min_duration: segments shorter than this many seconds are skipped.
    skip_prep: if True, nothing is checked or written (the CSV paths are still returned).
    """
    if isinstance(splits, str):
        raise TypeError(f"splits={splits!r} must be a list of split names, e.g. ['train', 'dev']")
    save_folder = Path(save_folder)
    csv_files = {split: str(save_folder / f"{split}.csv") for split in splits}
    if skip_prep:
        return csv_files
    if not min_duration >= 0:
        raise ValueError(f"min_duration={min_duration!r} must be >= 0 seconds")
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"data_folder={str(data_folder)!r} does not exist; point it at the TEDLIUM_release2 "
            "folder (make a synthetic one with: speechbrain-memristor make-corpus OUT_DIR)"
        )
    talk_files = {split: _talk_files(data_folder, split) for split in splits}
    save_folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        options = {
            "version": PREPARE_VERSION,
            "data_folder": str(data_folder.resolve()),
            "min_duration": float(min_duration),
            "fingerprint": _split_fingerprint(data_folder / split, talk_files[split]),
        }
        record_path = save_folder / f"{split}.prepare.json"
        record = _read_json(record_path)
        if (
            record is not None
            and record.get("options") == options
            and Path(csv_files[split]).is_file()
        ):
            logger.info("%s: already prepared in %s, skipping", split, csv_files[split])
            continue
        record_path.unlink(missing_ok=True)
        stats = _prepare_split(data_folder, save_folder, split, talk_files[split], min_duration)
        _write_json_atomically(record_path, {"options": options, "stats": stats})
        logger.info(
            "%s: %d utterances, %.2f hours -> %s (skipped: %s)",
            split,
            stats["utterances"],
            stats["hours"],
            csv_files[split],
            stats["skipped"] or "none",
        )
    return csv_files


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python tedlium2_prepare.py DATA_FOLDER SAVE_FOLDER``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_folder", help="the TEDLIUM_release2 folder")
    parser.add_argument("save_folder", help="where the CSVs and wav files go")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    parser.add_argument("--min-duration", type=float, default=1.0, help="seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_tedlium2(args.data_folder, args.save_folder, args.splits, args.min_duration)


if __name__ == "__main__":
    main()
