"""Tests of recipes/TEDLIUM2/tedlium2_prepare.py on a make-corpus corpus and hand-written STMs."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechbrain_memristor.app.corpus.layout import make_corpus

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "TEDLIUM2" / "tedlium2_prepare.py"
_spec = importlib.util.spec_from_file_location("tedlium2_prepare", RECIPE)
prepare = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = prepare  # dataclasses look their module up there
_spec.loader.exec_module(prepare)

RATE = 16000


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        assert tuple(reader.fieldnames) == ("ID", "duration", "wav", "spk_id", "wrd")
        return list(reader)


def _write_talk(root: Path, split: str, talk: str, seconds: float, stm: str, rate: int = RATE):
    """Writes a SPHERE file of noise and its STM; returns the samples."""
    (root / split / "sph").mkdir(parents=True, exist_ok=True)
    (root / split / "stm").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(talk))
    samples = rng.integers(-3000, 3000, size=round(seconds * rate), dtype=np.int16)
    soundfile.write(
        root / split / "sph" / f"{talk}.sph", samples, rate, format="NIST", subtype="PCM_16"
    )
    (root / split / "stm" / f"{talk}.stm").write_text(stm, encoding="utf-8")
    return samples


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), utterances=12, seed=0, progress=False)


def test_prepares_a_make_corpus_corpus(synthetic, tmp_path):
    csv_files = prepare.prepare_tedlium2(synthetic, tmp_path / "prepared")
    assert csv_files == {
        split: str(tmp_path / "prepared" / f"{split}.csv") for split in ("train", "dev", "test")
    }
    for split, csv_path in csv_files.items():
        # Expected rows, derived directly from the STM files and the documented rules.
        expected = []
        for stm in sorted((synthetic / split / "stm").glob("*.stm")):
            audio, _ = soundfile.read(synthetic / split / "sph" / f"{stm.stem}.sph", dtype="int16")
            for line in stm.read_text(encoding="utf-8").splitlines():
                talk, _, speaker, start, end, _, *words = line.split()
                first, last = round(float(start) * RATE), round(float(end) * RATE)
                if words == ["ignore_time_segment_in_scoring"] or last - first < RATE:
                    continue
                text = " ".join(w for w in words if w not in ("<sil>", "{NOISE}")).replace(
                    " '", "'"
                )
                utterance_id = (
                    f"{talk}-{round(float(start) * 100):07d}-{round(float(end) * 100):07d}"
                )
                expected.append((utterance_id, speaker, text, audio[first:last]))
        rows = _read_csv(csv_path)
        assert [(r["ID"], r["spk_id"], r["wrd"]) for r in rows] == [e[:3] for e in expected]
        for row, (*_, samples) in zip(rows, expected, strict=True):
            wav, rate = soundfile.read(row["wav"], dtype="int16")
            assert rate == RATE and Path(row["wav"]).is_absolute()
            assert np.array_equal(wav, samples)
            assert float(row["duration"]) == pytest.approx(len(samples) / RATE, abs=1e-4)
        assert {p.name for p in (tmp_path / "prepared" / "wav" / split).iterdir()} == {
            f"{r['ID']}.wav" for r in rows
        }


EDGE_STM = """;; comment lines and blank lines are skipped
AlGore_2009 1 inter_segment_gap 0.00 1.00 <o,,unknown> ignore_time_segment_in_scoring
AlGore_2009 1 AlGore_2009 1.00 2.50 <o,f0,male> so IT 'S the(2) world <sil> we 're here

AlGore_2009 1 AlGore_2009 2.50 4.00 <o,f0,male> {NOISE} i don 't know <unk> 'cause {BREATH}
AlGore_2009 1 AlGore_2009 4.00 4.60 <o,f0,male> too short
AlGore_2009 1 AlGore_2009 4.60 6.00 <o,f0,male> {NOISE} <sil>
AlGore_2009 1 AlGore_2009 6.00 7.25 <o,f0,male> you 'll see
AlGore_2009 1 AlGore_2009 6.00 7.25 <o,f0,male> you 'll see
AlGore_2009 1 AlGore_2009 9.00 11.00 <o,f0,male> past the end
AlGore_2009 1 AlGore_2009 12.00 13.50 <o,f0,male> after the end
"""


@pytest.fixture()
def edge_corpus(tmp_path) -> tuple[Path, np.ndarray]:
    root = tmp_path / "TEDLIUM_release2"
    samples = _write_talk(root, "train", "AlGore_2009", 10.0, EDGE_STM)
    _write_talk(
        root,
        "dev",
        "JaneDoe_2010",
        3.0,
        "JaneDoe_2010 1 JaneDoe_2010 0.50 2.00 <F0_F> hello there\n",
    )
    return root, samples


def test_edge_cases_of_stm_and_normalization(edge_corpus, tmp_path):
    root, samples = edge_corpus
    save = tmp_path / "prepared"
    prepare.prepare_tedlium2(root, save, splits=["train", "dev"])
    rows = _read_csv(save / "train.csv")
    assert [(r["ID"], r["duration"], r["spk_id"], r["wrd"]) for r in rows] == [
        ("AlGore_2009-0000100-0000250", "1.5000", "AlGore_2009", "so it's the world we're here"),
        ("AlGore_2009-0000250-0000400", "1.5000", "AlGore_2009", "i don't know 'cause"),
        ("AlGore_2009-0000600-0000725", "1.2500", "AlGore_2009", "you'll see"),
        ("AlGore_2009-0000900-0001100", "1.0000", "AlGore_2009", "past the end"),
    ]
    assert np.array_equal(soundfile.read(rows[3]["wav"], dtype="int16")[0], samples[9 * RATE :])
    assert np.array_equal(soundfile.read(rows[0]["wav"], dtype="int16")[0], samples[RATE:40000])
    stats = json.loads((save / "train.prepare.json").read_text())["stats"]
    assert stats["skipped"] == {
        "ignore_time_segment_in_scoring": 1,
        "too_short": 1,
        "empty": 1,
        "duplicate": 1,
        "outside_audio": 1,
    }
    assert stats["utterances"] == 4
    assert stats["hours"] == pytest.approx(5.25 / 3600, abs=1e-4)
    assert [r["wrd"] for r in _read_csv(save / "dev.csv")] == ["hello there"]


def test_work_already_done_is_skipped_and_changes_are_redone(edge_corpus, tmp_path, caplog):
    root, _ = edge_corpus
    save = tmp_path / "prepared"
    prepare.prepare_tedlium2(root, save, splits=["train"])
    csv_path = save / "train.csv"
    stamp = csv_path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        prepare.prepare_tedlium2(root, save, splits=["train"])
    assert csv_path.stat().st_mtime_ns == stamp and "already prepared" in caplog.text
    # Another option: redone, and wav files of dropped segments disappear.
    prepare.prepare_tedlium2(root, save, splits=["train"], min_duration=1.3)
    ids = [r["ID"] for r in _read_csv(csv_path)]
    assert ids == ["AlGore_2009-0000100-0000250", "AlGore_2009-0000250-0000400"]
    assert sorted(p.stem for p in (save / "wav" / "train").iterdir()) == ids
    # A changed STM file: redone.
    stm = root / "train" / "stm" / "AlGore_2009.stm"
    stm.write_text(stm.read_text() + "AlGore_2009 1 AlGore_2009 7.50 8.90 <o,f0,male> one more\n")
    prepare.prepare_tedlium2(root, save, splits=["train"], min_duration=1.3)
    assert [r["wrd"] for r in _read_csv(csv_path)][-1] == "one more"
    # skip_prep: nothing is checked or written.
    assert prepare.prepare_tedlium2(tmp_path / "nowhere", tmp_path / "unused", skip_prep=True) == {
        split: str(tmp_path / "unused" / f"{split}.csv") for split in ("train", "dev", "test")
    }
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    "normalization",
    [
        ("it 's", "it's"),
        ("WE 'RE", "we're"),
        ("they 'd they 'll i 'm we 've can 't", "they'd they'll i'm we've can't"),
        ("'s alone", "'s alone"),
        ("the(2) a(3)", "the a"),
        ("<sil> {NOISE} [laughter] <unk> word", "word"),
        ("  spaced \t out  ", "spaced out"),
        ("<sil>", ""),
    ],
)
def test_normalize_transcript(normalization):
    written, normalized = normalization
    assert prepare.normalize_transcript(written) == normalized


def _assert_nothing_written(save: Path) -> None:
    assert not list(save.glob("*.csv")) and not list(save.glob("*.prepare.json"))


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare.prepare_tedlium2(tmp_path / "missing", tmp_path / "save")


def test_missing_split_folder(edge_corpus, tmp_path):
    root, _ = edge_corpus
    with pytest.raises(FileNotFoundError, match=str(root / "test")):
        prepare.prepare_tedlium2(root, tmp_path / "save")
    _assert_nothing_written(tmp_path / "save")


def test_stm_without_sph(edge_corpus, tmp_path):
    root, _ = edge_corpus
    (root / "train" / "sph" / "AlGore_2009.sph").unlink()
    with pytest.raises(FileNotFoundError, match=str(root / "train" / "sph" / "AlGore_2009.sph")):
        prepare.prepare_tedlium2(root, tmp_path / "save", splits=["train"])
    _assert_nothing_written(tmp_path / "save")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: b"garbage" * 300, "cannot read audio file"),
        (lambda raw: raw[: len(raw) - 5000], "truncated"),
    ],
    ids=["garbage", "truncated"],
)
def test_corrupt_sph_is_named(edge_corpus, tmp_path, damage, message):
    root, _ = edge_corpus
    sph = root / "train" / "sph" / "AlGore_2009.sph"
    sph.write_bytes(damage(sph.read_bytes()))
    with pytest.raises(RuntimeError, match=message) as error:
        prepare.prepare_tedlium2(root, tmp_path / "save", splits=["train"])
    assert str(sph) in str(error.value)
    _assert_nothing_written(tmp_path / "save")


def test_wrong_sample_rate_is_named(tmp_path):
    root = tmp_path / "TEDLIUM_release2"
    _write_talk(
        root,
        "train",
        "Fast_2010",
        3.0,
        "Fast_2010 1 Fast_2010 0.0 2.0 <o,f0,male> hi there\n",
        rate=8000,
    )
    with pytest.raises(RuntimeError, match="8000 Hz") as error:
        prepare.prepare_tedlium2(root, tmp_path / "save", splits=["train"])
    assert "Fast_2010.sph" in str(error.value)


def test_malformed_stm_line_is_named(edge_corpus, tmp_path):
    root, _ = edge_corpus
    stm = root / "train" / "stm" / "AlGore_2009.stm"
    stm.write_text(
        "AlGore_2009 1 AlGore_2009 1.00 2.50 <o,f0,male> fine\nAlGore_2009 1 AlGore_2009 abc\n"
    )
    with pytest.raises(ValueError, match=f"{stm}:2"):
        prepare.prepare_tedlium2(root, tmp_path / "save", splits=["train"])
    _assert_nothing_written(tmp_path / "save")
