"""Builds a synthetic spoken-English corpus in the TED-LIUM release 2 layout.

``make_corpus(out_dir)`` writes ``out_dir/TEDLIUM_release2/{train,dev,test}/{sph,stm}/<talk>.*``:
NIST SPHERE files (16 kHz, 16-bit, mono) and STM files whose lines read
``<talk> 1 <speaker> <start> <end> <label> <words...>`` with times in seconds.

Each talk is one synthetic speaker: an applause intro, transcribed segments separated by short
pauses, now and then an untranscribed segment, a closing "thank you" and applause.
Unscored regions are STM lines with speaker ``inter_segment_gap`` and text
``ignore_time_segment_in_scoring``. Transcripts follow TED-LIUM conventions: lower case,
contractions split (``it 's``), and, inside some segments, ``<sil>`` (a pause) or ``{NOISE}``
(a noise burst). Labels are ``<o,f0,male>`` style, ``<F0_M>`` style in dev.

Determinism: every random choice derives from ``seed``; each talk is synthesized in a fresh
process with its own engine seed. The same seed and size give byte-identical files.
The corpus is built in a hidden folder next to the target and renamed when complete; the
manifest ``synthetic_corpus.json`` marks a complete corpus, so a rerun is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speechbrain_memristor.app.corpus.espeak import check_available, synthesize_in_subprocess
from speechbrain_memristor.app.corpus.speakers import Speaker, make_speakers
from speechbrain_memristor.app.corpus.text import CLOSING, sentence, spoken_text
from speechbrain_memristor.util.seeding import seed_from_text

logger = logging.getLogger(__name__)

RELEASE_NAME = "TEDLIUM_release2"
MANIFEST_NAME = "synthetic_corpus.json"
FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
SAMPLE_RATE = 16000
HELD_OUT_FRACTION = 0.1  # of the utterances, for each of dev and test
UTTERANCES_PER_TALK = {"train": 40, "dev": 25, "test": 25}
MIN_UTTERANCES = len(SPLITS)

IGNORE_TEXT = "ignore_time_segment_in_scoring"
GAP_SPEAKER = "inter_segment_gap"
GAP_LABEL = "<o,,unknown>"
SILENCE_TAG = "<sil>"
NOISE_TAG = "{NOISE}"

SEGMENT_PAD_S = 0.1  # STM boundaries sit this far outside the speech
PAUSE_S = (0.3, 0.8)  # between segments
INNER_PAUSE_S = (0.35, 0.6)  # a <sil> or {NOISE} inside a segment
APPLAUSE_S = (1.0, 2.0)
NOISE_BURST_S = (0.2, 0.35)
SPEECH_RMS = 0.08  # about -22 dBFS before the speaker's loudness gain
PEAK_LIMIT = 0.9
BACKGROUND_RMS = 0.002  # about -54 dBFS
UNSCORED_SPEECH_PROBABILITY = 0.05
TWO_SENTENCE_PROBABILITY = 0.12


class CorpusError(RuntimeError):
    """A corpus cannot be made as asked (the message says why and how to fix it)."""


@dataclass
class Segment:
    """One STM segment of a talk: sentences (TED-LIUM tokens) joined by separator tags."""

    sentences: list[list[str]]
    separators: list[str] = field(default_factory=list)  # len(sentences) - 1 tags
    scored: bool = True


@dataclass
class TalkPlan:
    """One talk: its split, speaker, segments and the seed of its audio randomness."""

    split: str
    speaker: Speaker
    segments: list[Segment]
    seed: int

    @property
    def engine_seed(self) -> int:
        return _derived_seed(self.seed, "engine")

    def texts(self) -> list[str]:
        """Sentences to synthesize, in segment order."""
        return [spoken_text(words) for segment in self.segments for words in segment.sentences]


def _derived_seed(*parts: object) -> int:
    """A 31-bit seed of the parts joined by ":" (the corpus format's own rule: changing it
    would change every synthesized corpus)."""
    return seed_from_text(":".join(str(part) for part in parts), bits=31)


def split_sizes(utterances: int) -> dict[str, int]:
    """Scored utterances per split: 10 % dev, 10 % test (at least 1 each), the rest train."""
    held_out = max(1, round(HELD_OUT_FRACTION * utterances))
    return {"train": utterances - 2 * held_out, "dev": held_out, "test": held_out}


def _talk_sizes(utterances: int, per_talk: int) -> list[int]:
    talks = max(1, min(utterances // 4, 2), round(utterances / per_talk))
    base, extra = divmod(utterances, talks)
    return [base + (1 if index < extra else 0) for index in range(talks)]


def plan_corpus(utterances: int, seed: int) -> list[TalkPlan]:
    """Speakers and transcripts of every talk (no audio); deterministic in (utterances, seed)."""
    rng = random.Random(_derived_seed(seed, "plan"))
    sizes = {
        split: _talk_sizes(count, UTTERANCES_PER_TALK[split])
        for split, count in split_sizes(utterances).items()
    }
    speakers = make_speakers({split: len(talks) for split, talks in sizes.items()}, rng)
    plans = []
    for split in SPLITS:
        for speaker, count in zip(speakers[split], sizes[split], strict=True):
            segments = []
            for index in range(count):
                if count >= 2 and index == count - 1:
                    segments.append(Segment([list(CLOSING)]))
                    break
                if rng.random() < UNSCORED_SPEECH_PROBABILITY:
                    segments.append(Segment([sentence(rng)], scored=False))
                if rng.random() < TWO_SENTENCE_PROBABILITY:
                    tag = SILENCE_TAG if rng.random() < 0.6 else NOISE_TAG
                    segments.append(Segment([sentence(rng), sentence(rng)], [tag]))
                else:
                    segments.append(Segment([sentence(rng)]))
            plans.append(TalkPlan(split, speaker, segments, _derived_seed(seed, speaker.talk_id)))
    return plans


def _to_16k(pcm: bytes, sample_rate: int) -> np.ndarray:
    """int16 bytes at ``sample_rate`` -> float64 samples at 16 kHz, level-normalized."""
    import torch
    import torchaudio.functional

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    resampled = torchaudio.functional.resample(
        torch.from_numpy(samples), sample_rate, SAMPLE_RATE
    ).numpy()
    rms = float(np.sqrt(np.mean(resampled**2))) if resampled.size else 0.0
    if rms == 0.0:
        raise CorpusError("eSpeak NG produced silence for a sentence; check the voice settings")
    return resampled * (SPEECH_RMS / rms)


def _noise(rng: np.random.Generator, seconds: float, level: float) -> np.ndarray:
    """Applause-like noise: white noise with a slow random envelope."""
    count = round(seconds * SAMPLE_RATE)
    envelope = np.interp(np.arange(count), np.linspace(0, count, 9), rng.uniform(0.3, 1.0, size=9))
    return level * envelope * rng.standard_normal(count)


def _silence(rng: random.Random, bounds: tuple[float, float]) -> np.ndarray:
    return np.zeros(round(rng.uniform(*bounds) * SAMPLE_RATE))


def render_talk(
    plan: TalkPlan, sample_rate: int, pcm_per_text: list[bytes]
) -> tuple[np.ndarray, str]:
    """Assembles a talk's audio (int16, 16 kHz) and its STM text from synthesized sentences."""
    talk = plan.speaker.talk_id
    rng = random.Random(_derived_seed(plan.seed, "layout"))
    noise_rng = np.random.default_rng(_derived_seed(plan.seed, "noise"))
    label = _label(plan.split, plan.speaker.gender)
    pieces: list[np.ndarray] = [_noise(noise_rng, rng.uniform(*APPLAUSE_S), SPEECH_RMS)]
    position = len(pieces[0])
    stm_lines = [_stm_line(talk, GAP_SPEAKER, 0.0, position / SAMPLE_RATE, GAP_LABEL, IGNORE_TEXT)]
    sentence_audio = iter(pcm_per_text)
    for segment in plan.segments:
        pieces.append(_silence(rng, PAUSE_S))
        position += len(pieces[-1])
        start = position
        words: list[str] = []
        for index, tokens in enumerate(segment.sentences):
            if index > 0:
                tag = segment.separators[index - 1]
                gap = _silence(rng, INNER_PAUSE_S)
                if tag == NOISE_TAG:
                    burst = _noise(noise_rng, rng.uniform(*NOISE_BURST_S), SPEECH_RMS)
                    gap[: len(burst)] += burst[: len(gap)]
                pieces.append(gap)
                position += len(gap)
                words.append(tag)
            speech = _to_16k(next(sentence_audio), sample_rate) * plan.speaker.loudness
            pieces.append(speech)
            position += len(speech)
            words += tokens
        stm_start = max(0.0, start / SAMPLE_RATE - SEGMENT_PAD_S)
        stm_end = position / SAMPLE_RATE + SEGMENT_PAD_S
        if segment.scored:
            stm_lines.append(_stm_line(talk, talk, stm_start, stm_end, label, " ".join(words)))
        else:
            stm_lines.append(
                _stm_line(talk, GAP_SPEAKER, stm_start, stm_end, GAP_LABEL, IGNORE_TEXT)
            )
    pieces.append(_silence(rng, PAUSE_S))
    outro_start = (position + len(pieces[-1])) / SAMPLE_RATE
    pieces.append(_noise(noise_rng, rng.uniform(*APPLAUSE_S), SPEECH_RMS))
    audio = np.concatenate(pieces)
    stm_lines.append(
        _stm_line(talk, GAP_SPEAKER, outro_start, len(audio) / SAMPLE_RATE, GAP_LABEL, IGNORE_TEXT)
    )
    audio += BACKGROUND_RMS * noise_rng.standard_normal(len(audio))
    peak = float(np.max(np.abs(audio)))
    if peak > PEAK_LIMIT:
        audio *= PEAK_LIMIT / peak
    return np.round(audio * 32767.0).astype(np.int16), "".join(stm_lines)


def _label(split: str, gender: str) -> str:
    if split == "dev":
        return "<F0_M>" if gender == "male" else "<F0_F>"
    return f"<o,f0,{gender}>"


def _stm_line(talk: str, speaker: str, start: float, end: float, label: str, text: str) -> str:
    # Floor the start and ceil the end to 10 ms so the segment always contains its speech.
    start_cs = int(np.floor(start * 100 + 1e-6))
    end_cs = int(np.ceil(end * 100 - 1e-6))
    return f"{talk} 1 {speaker} {start_cs / 100:.2f} {end_cs / 100:.2f} {label} {text}\n"


def _write_talk(split_folder: Path, talk: str, audio: np.ndarray, stm: str) -> None:
    import soundfile

    soundfile.write(
        split_folder / "sph" / f"{talk}.sph", audio, SAMPLE_RATE, format="NIST", subtype="PCM_16"
    )
    (split_folder / "stm" / f"{talk}.stm").write_text(stm, encoding="utf-8")


def _remove_stale_partials(out_dir: Path) -> None:
    """Deletes build folders left by runs whose process no longer exists (POSIX only)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    for partial in out_dir.glob(f".{RELEASE_NAME}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _read_manifest(release: Path) -> dict | None:
    try:
        return json.loads((release / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _default_jobs() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_corpus(
    out_dir: str | os.PathLike,
    utterances: int = 1000,
    seed: int = 0,
    jobs: int | None = None,
    progress: bool = True,
) -> Path:
    """Synthesizes the corpus into ``out_dir/TEDLIUM_release2`` and returns that folder.

    utterances: transcribed (scored) segments over all splits: 10 % dev, 10 % test, the
        rest train; each talk's last one is "thank you" (usually below 1 s). Talks add
        unscored segments on top. The default 1000 gives 20 training speakers and 4 unseen
        speakers each in dev and test, about an hour of audio.
    seed: any non-negative integer; the same (utterances, seed) gives the same bytes.
    jobs: synthesis processes run at once (default: the CPUs this process may use).

    A complete corpus already there with the same arguments is left alone; one made with other
    arguments, or any other content at that path, raises :class:`CorpusError`.
    """
    jobs = _check_arguments(utterances, seed, jobs)
    out_dir = Path(out_dir)
    release = out_dir / RELEASE_NAME
    arguments = {"format_version": FORMAT_VERSION, "utterances": utterances, "seed": seed}
    if _already_complete(release, arguments):
        return release
    try:
        check_available()
    except ImportError as error:
        raise CorpusError(str(error)) from error

    plans = plan_corpus(utterances, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    partial = out_dir / f".{RELEASE_NAME}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for split in SPLITS:
            for kind in ("sph", "stm"):
                (partial / split / kind).mkdir(parents=True)
        talks = _synthesize_all(plans, partial, jobs, progress)
        manifest = _manifest(arguments, talks)
        (partial / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=1) + "\n", encoding="utf-8"
        )
        os.rename(partial, release)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Wrote %d talks (%s hours) to %s", len(talks), manifest["hours"], release)
    return release


def _check_arguments(utterances: object, seed: object, jobs: int | None) -> int:
    """Validates the arguments of `make_corpus`; returns the number of jobs to run."""
    if (
        isinstance(utterances, bool)
        or not isinstance(utterances, int)
        or utterances < MIN_UTTERANCES
    ):
        raise CorpusError(
            f"utterances={utterances!r} is invalid; use an integer >= {MIN_UTTERANCES}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CorpusError(f"seed={seed!r} is invalid; use a non-negative integer")
    jobs = _default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise CorpusError(f"jobs={jobs!r} is invalid; use a positive integer")
    return jobs


def _already_complete(release: Path, arguments: dict) -> bool:
    """True if ``release`` holds a complete corpus made with ``arguments``; a CorpusError if
    it holds anything else; False if it does not exist."""
    if not release.exists():
        return False
    manifest = _read_manifest(release)
    if manifest is not None and manifest.get("arguments") == arguments:
        logger.info("Corpus already complete at %s; nothing to do", release)
        return True
    found = manifest.get("arguments") if manifest else "no synthetic-corpus manifest"
    raise CorpusError(
        f"{release} already exists ({found}), which differs from the requested {arguments}; "
        "choose another OUT_DIR or delete that folder"
    )


def _manifest(arguments: dict, talks: list[dict]) -> dict:
    """The corpus manifest: arguments, sample rate, every talk, hours per split."""
    return {
        "arguments": arguments,
        "description": "Synthetic TED-LIUM 2 style corpus made with eSpeak NG by speechbrain-memristor make-corpus",
        "sample_rate": SAMPLE_RATE,
        "talks": talks,
        "hours": {
            split: round(sum(t["seconds"] for t in talks if t["split"] == split) / 3600, 4)
            for split in SPLITS
        },
    }


def _synthesize_all(plans: list[TalkPlan], partial: Path, jobs: int, progress: bool) -> list[dict]:
    """Synthesizes talks ``jobs`` at a time and writes them; returns per-talk manifest rows."""
    from tqdm import tqdm

    rows: dict[str, dict] = {}
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {
        pool.submit(
            synthesize_in_subprocess, plan.texts(), plan.speaker.voice, plan.engine_seed
        ): plan
        for plan in plans
    }
    bar = tqdm(total=len(plans), desc="synthesizing talks", unit="talk", disable=not progress)
    try:
        for future in as_completed(futures):
            plan = futures[future]
            sample_rate, pcm_per_text = future.result()
            audio, stm = render_talk(plan, sample_rate, pcm_per_text)
            _write_talk(partial / plan.split, plan.speaker.talk_id, audio, stm)
            rows[plan.speaker.talk_id] = {
                "split": plan.split,
                "talk": plan.speaker.talk_id,
                "gender": plan.speaker.gender,
                "voice": asdict(plan.speaker.voice),
                "loudness": plan.speaker.loudness,
                "scored_segments": sum(segment.scored for segment in plan.segments),
                "seconds": round(len(audio) / SAMPLE_RATE, 3),
            }
            bar.update()
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return [rows[plan.speaker.talk_id] for plan in plans]
