"""Tests of the synthetic TED-LIUM 2 style corpus (``make-corpus``), with real eSpeak NG."""

from __future__ import annotations

import json
import random
import re
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechbrain_memristor.app.cli import main
from speechbrain_memristor.app.corpus import text
from speechbrain_memristor.app.corpus.espeak import (
    MAX_DATA_PATH_BYTES,
    VoiceSettings,
    _short_data_path,
    synthesize_in_subprocess,
)
from speechbrain_memristor.app.corpus.layout import (
    MANIFEST_NAME,
    RELEASE_NAME,
    CorpusError,
    make_corpus,
    split_sizes,
)
from speechbrain_memristor.app.corpus.speakers import make_speakers

TINY = 12


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two tiny corpora with seed 0 (different job counts) and one with seed 1."""
    root = tmp_path_factory.mktemp("corpora")
    # A build folder left by a killed run (no process has this pid): removed by the next run.
    (root / "c" / f".{RELEASE_NAME}.partial-{2**31 - 5}" / "train").mkdir(parents=True)
    return {
        "a": make_corpus(root / "a", utterances=TINY, seed=0, jobs=2, progress=False),
        "b": make_corpus(root / "b", utterances=TINY, seed=0, jobs=1, progress=False),
        "other_seed": make_corpus(root / "c", utterances=TINY, seed=1, progress=False),
    }


def _stm_lines(release: Path, split: str) -> list[tuple[Path, list[str]]]:
    return [
        (stm, line.split())
        for stm in sorted((release / split / "stm").glob("*.stm"))
        for line in stm.read_text(encoding="utf-8").splitlines()
    ]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(corpora):
    first, second, other = (_files(corpora[key]) for key in ("a", "b", "other_seed"))
    assert len(first) == 1 + 2 * 4  # manifest + (sph, stm) for 2 train talks, 1 dev, 1 test
    assert first == second
    first_audio = b"".join(content for name, content in first.items() if name.endswith(".sph"))
    other_audio = b"".join(content for name, content in other.items() if name.endswith(".sph"))
    assert first_audio != other_audio
    assert {name for name in first if name.endswith(".stm")} != {
        name for name in other if name.endswith(".stm")
    }


def test_layout_and_nist_sphere_files(corpora):
    release = corpora["a"]
    assert release.name == RELEASE_NAME
    for split in ("train", "dev", "test"):
        sph_stems = {path.stem for path in (release / split / "sph").iterdir()}
        stm_stems = {path.stem for path in (release / split / "stm").iterdir()}
        assert sph_stems == stm_stems and sph_stems
        for sph in (release / split / "sph").iterdir():
            raw = sph.read_bytes()
            header = raw[:1024].split(b"end_head")[0].decode("ascii")
            assert raw.startswith(b"NIST_1A\n   1024\n")
            fields = dict(re.findall(r"^(\S+) -\S+ (\S+)$", header, flags=re.MULTILINE))
            assert fields["sample_rate"] == "16000"
            assert fields["channel_count"] == "1"
            assert fields["sample_n_bytes"] == "2"
            assert len(raw) == 1024 + 2 * int(fields["sample_count"])
            info = soundfile.info(sph)
            assert (info.format, info.subtype, info.samplerate, info.channels) == (
                "NIST",
                "PCM_16",
                16000,
                1,
            )
            assert info.frames == int(fields["sample_count"])


def test_stm_lines_follow_tedlium_format(corpora):
    release = corpora["a"]
    allowed_words = text.vocabulary() | {"<sil>", "{NOISE}"}
    for split in ("train", "dev", "test"):
        scored = 0
        for stm, fields in _stm_lines(release, split):
            talk, channel, speaker, start, end, label, *words = fields
            assert talk == stm.stem and channel == "1"
            assert re.fullmatch(r"\d+\.\d\d", start) and re.fullmatch(r"\d+\.\d\d", end)
            assert float(start) < float(end)
            if words == ["ignore_time_segment_in_scoring"]:
                assert (speaker, label) == ("inter_segment_gap", "<o,,unknown>")
                continue
            scored += 1
            assert speaker == talk
            if split == "dev":
                assert label in ("<F0_M>", "<F0_F>")
            else:
                assert label in ("<o,f0,male>", "<o,f0,female>")
            assert words and set(words) <= allowed_words
        assert scored == split_sizes(TINY)[split]
        # Segments are in time order and never overlap; every talk starts and ends with applause.
        for stm in (release / split / "stm").glob("*.stm"):
            lines = [line.split() for line in stm.read_text(encoding="utf-8").splitlines()]
            times = [(float(line[3]), float(line[4])) for line in lines]
            assert all(end <= next_start for (_, end), (next_start, _) in pairwise(times))
            assert lines[0][-1] == lines[-1][-1] == "ignore_time_segment_in_scoring"
            duration = soundfile.info(release / split / "sph" / f"{stm.stem}.sph").duration
            assert times[-1][1] <= duration + 0.01


def test_contractions_and_tags_appear_in_a_larger_plan():
    from speechbrain_memristor.app.corpus.layout import plan_corpus

    words = [
        " ".join(word for sentence in segment.sentences for word in sentence)
        for plan in plan_corpus(300, seed=0)
        for segment in plan.segments
    ]
    joined = " ".join(words)
    assert " 's " in joined and " 't " in joined and " 're " in joined
    separators = {
        tag for plan in plan_corpus(300, seed=0) for s in plan.segments for tag in s.separators
    }
    assert separators == {"<sil>", "{NOISE}"}
    assert any(not s.scored for plan in plan_corpus(300, seed=0) for s in plan.segments)


def test_segments_contain_the_speech(corpora):
    """STM times must line up with the audio.

    Each scored segment starts and ends with 0.1 s of padding cut from a pause, which holds only
    the background noise (RMS 0.002 of full scale), while speech is normalized to RMS 0.08 times a
    speaker gain of at least 0.6 (pauses inside a segment dilute it, but a sentence is mostly
    voiced). A misaligned STM would put speech into the pads or silence into the segment.
    """
    release = corpora["a"]
    for split in ("train", "dev", "test"):
        for stm, fields in _stm_lines(release, split):
            if fields[6] == "ignore_time_segment_in_scoring":
                continue
            audio, rate = soundfile.read(release / split / "sph" / f"{stm.stem}.sph")
            first, last = round(float(fields[3]) * rate), round(float(fields[4]) * rate)
            pad = round(0.08 * rate)

            def rms(samples):
                return float(np.sqrt(np.mean(samples**2)))

            assert rms(audio[first : first + pad]) < 0.006
            assert rms(audio[last - pad : last]) < 0.006
            assert rms(audio[first:last]) > 0.02


def test_levels_are_normalized_without_clipping(corpora):
    for sph in corpora["a"].rglob("*.sph"):
        samples, _ = soundfile.read(sph, dtype="int16")
        assert np.abs(samples.astype(np.int32)).max() <= round(0.9 * 32767)


def test_dev_and_test_speakers_are_unseen(corpora):
    manifest = json.loads((corpora["a"] / MANIFEST_NAME).read_text())
    voices = {
        split: {t["voice"]["voice"] for t in manifest["talks"] if t["split"] == split}
        for split in ("train", "dev", "test")
    }
    assert voices["train"].isdisjoint(voices["dev"] | voices["test"])
    assert voices["dev"].isdisjoint(voices["test"])
    # Also when there are more training talks than (accent, variant) pairs left over.
    speakers = make_speakers({"train": 150, "dev": 6, "test": 6}, random.Random(0))
    train_pairs = {speaker.voice.voice for speaker in speakers["train"]}
    held_out = {speaker.voice.voice for split in ("dev", "test") for speaker in speakers[split]}
    assert len(held_out) == 12 and train_pairs.isdisjoint(held_out)
    names = [speaker.talk_id for split in speakers.values() for speaker in split]
    assert len(set(names)) == len(names)


def test_rerun_is_a_no_op_and_conflicts_are_refused(corpora):
    release = corpora["a"]
    before = {path: path.stat().st_mtime_ns for path in release.rglob("*")}
    assert make_corpus(release.parent, utterances=TINY, seed=0, progress=False) == release
    assert {path: path.stat().st_mtime_ns for path in release.rglob("*")} == before
    with pytest.raises(CorpusError, match="seed"):
        make_corpus(release.parent, utterances=TINY, seed=5, progress=False)
    for corpus in corpora.values():
        assert [path.name for path in corpus.parent.iterdir()] == [RELEASE_NAME]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"utterances": 2}, "utterances=2"),
        ({"utterances": 10.0}, "utterances=10.0"),
        ({"seed": -1}, "seed=-1"),
        ({"jobs": 0}, "jobs=0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, arguments, message):
    with pytest.raises(CorpusError, match=re.escape(message)):
        make_corpus(tmp_path, **{"utterances": TINY, **arguments})
    assert not (tmp_path / RELEASE_NAME).exists()


def test_cli_make_corpus(corpora, tmp_path, capsys):
    assert main(["make-corpus", str(corpora["a"].parent), "--utterances", str(TINY)]) == 0
    assert capsys.readouterr().out.strip() == str(corpora["a"])
    assert main(["make-corpus", str(tmp_path), "--utterances", "2"]) == 1
    assert "utterances=2" in capsys.readouterr().err


def test_missing_espeak_gives_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(CorpusError, match=re.escape("pip install -e '.[demo]'")):
        make_corpus(tmp_path, utterances=TINY)
    assert main(["make-corpus", str(tmp_path)]) == 1
    assert "install the demo extra" in capsys.readouterr().err


def test_sentences_are_deterministic_and_use_a_small_vocabulary():
    vocabulary = text.vocabulary()
    assert 200 <= len(vocabulary) <= 300
    rng = random.Random(0)
    sentences = [text.sentence(rng) for _ in range(5000)]
    again, other = random.Random(0), random.Random(1)
    assert [text.sentence(again) for _ in range(5000)] == sentences
    assert [text.sentence(other) for _ in range(50)] != sentences[:50]
    used = {word for sentence in sentences for word in sentence}
    assert used <= vocabulary
    # 5000 sentences of ~10 words draw every word many times over; a word that never appears
    # would mean a dead entry in vocabulary() (the closing "thank" is only used by talks).
    assert vocabulary - used <= {"thank"}
    assert all(re.fullmatch(r"[a-z']+", word) for word in used)
    assert (
        text.spoken_text(["it", "'s", "fine", "i", "don", "'t", "know"]) == "it's fine i don't know"
    )


def test_long_espeak_data_path_is_shortened(tmp_path):
    long_folder = tmp_path / ("x" * 60) / ("y" * 60)
    long_folder.mkdir(parents=True)
    (long_folder / "phontab").write_bytes(b"data")
    with _short_data_path(str(long_folder)) as short:
        assert len(short.encode()) <= MAX_DATA_PATH_BYTES
        assert (Path(short) / "phontab").read_bytes() == b"data"
    assert not Path(short).exists()
    with _short_data_path(str(tmp_path)) as unchanged:
        assert unchanged == str(tmp_path)


def test_synthesis_worker_errors_are_reported():
    voice = VoiceSettings(voice="xx-nowhere+m1", rate=170, pitch=50, pitch_range=50)
    with pytest.raises(RuntimeError, match="xx-nowhere"):
        synthesize_in_subprocess(["hello"], voice, seed=0)
