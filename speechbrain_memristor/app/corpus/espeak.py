"""ctypes binding to the eSpeak NG library bundled by the optional ``espeakng-loader`` package.

eSpeak NG (GPL-3) is used only to synthesize demo data; it is loaded at run time and never
linked into this package. The engine keeps waveform state between sentences, so byte-identical
output needs a fixed random seed (``espeak_ng_SetRandSeed``) and a fresh process per talk:
:func:`synthesize_in_subprocess` runs this file as a script with a JSON request on stdin and
reads the raw samples back from stdout. The worker imports only the standard library and
``espeakng_loader`` so that starting it is fast.

Output: mono int16 samples at the engine's native rate (22,050 Hz).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

INSTALL_HINT = "install the demo extra: pip install -e '.[demo]'"

# eSpeak NG keeps its data path in a 160-byte buffer (and appends file names to it).
MAX_DATA_PATH_BYTES = 100

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class SynthesizerUnavailableError(ImportError):
    """Raised when the optional eSpeak NG engine cannot be loaded."""


@dataclass(frozen=True)
class VoiceSettings:
    """How one synthetic speaker sounds.

    voice: eSpeak NG voice name with variant, e.g. ``"en-us+f3"``.
    rate: speaking rate in words per minute (80..450).
    pitch, pitch_range: base pitch and intonation range (0..100, eSpeak units).
    volume: amplitude (0..200, eSpeak units; 100 is the default).
    """

    voice: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int = 100


def _import_loader():
    try:
        import espeakng_loader
    except ImportError as error:
        raise SynthesizerUnavailableError(
            f"speech synthesis needs the 'espeakng-loader' package ({error}); {INSTALL_HINT}"
        ) from error
    return espeakng_loader


@contextlib.contextmanager
def _short_data_path(data_path: str) -> Iterator[str]:
    """Yields ``data_path`` or, when it is too long for eSpeak NG, a short symlink to it."""
    if len(os.fsencode(data_path)) <= MAX_DATA_PATH_BYTES:
        yield data_path
        return
    link_folder = tempfile.mkdtemp(prefix="esng")
    link = os.path.join(link_folder, "d")
    try:
        os.symlink(data_path, link)
        if len(os.fsencode(link)) > MAX_DATA_PATH_BYTES:
            raise SynthesizerUnavailableError(
                f"the temporary folder path {link!r} is too long for eSpeak NG "
                f"(max {MAX_DATA_PATH_BYTES} bytes); set TMPDIR to a shorter folder"
            )
        yield link
    finally:
        shutil.rmtree(link_folder, ignore_errors=True)


class EspeakEngine:
    """One initialized eSpeak NG engine (one per process: the library has global state)."""

    def __init__(self, seed: int) -> None:
        loader = _import_loader()
        try:
            self._library = ctypes.CDLL(loader.get_library_path())
            data_path = loader.get_data_path()
        except (OSError, RuntimeError) as error:
            raise SynthesizerUnavailableError(
                f"cannot load eSpeak NG from espeakng-loader ({error}); {INSTALL_HINT}"
            ) from error
        library = self._library
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        library.espeak_SetVoiceByName.restype = ctypes.c_int
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.restype = ctypes.c_int
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        library.espeak_Synth.restype = ctypes.c_int
        library.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        with _short_data_path(data_path) as short_path:
            self.sample_rate = library.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(short_path), _INITIALIZE_DONT_EXIT
            )
        if self.sample_rate <= 0:
            raise SynthesizerUnavailableError(
                f"eSpeak NG failed to initialize with data folder {data_path!r}; {INSTALL_HINT}"
            )
        library.espeak_ng_SetRandSeed(seed)
        self._chunks: list[bytes] = []
        # Keep a reference: ctypes callbacks must outlive their registration.
        self._callback = _SynthCallback(self._collect)
        library.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count: int, events) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(samples, count * 2))
        return 0

    def set_voice(self, settings: VoiceSettings) -> None:
        """Selects the voice, then rate, pitch, range and volume."""
        if self._library.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise ValueError(
                f"voice={settings.voice!r} is not an eSpeak NG voice; use e.g. 'en-us+m3'"
            )
        for name, value in (
            ("rate", settings.rate),
            ("pitch", settings.pitch),
            ("range", settings.pitch_range),
            ("volume", settings.volume),
        ):
            if self._library.espeak_SetParameter(_PARAMETER_IDS[name], value, 0) != 0:
                raise ValueError(f"eSpeak NG rejected {name}={value}")

    def synthesize(self, text: str) -> bytes:
        """Returns the speech for ``text`` as little-endian int16 bytes at ``sample_rate``."""
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        status = self._library.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"eSpeak NG failed (status {status}) on text {text!r}")
        return b"".join(self._chunks)


def _run_worker() -> None:
    """Worker entry: JSON request on stdin, samples on stdout.

    Request: ``{"seed": int, "voice": VoiceSettings fields, "texts": [str, ...]}``.
    Reply: uint32 sample rate, then per text a uint64 sample count and the int16 samples.
    """
    request = json.load(sys.stdin)
    engine = EspeakEngine(request["seed"])
    engine.set_voice(VoiceSettings(**request["voice"]))
    out = sys.stdout.buffer
    out.write(struct.pack("<I", engine.sample_rate))
    for text in request["texts"]:
        pcm = engine.synthesize(text)
        out.write(struct.pack("<Q", len(pcm) // 2))
        out.write(pcm)
    out.flush()


def check_available() -> None:
    """Raises :class:`SynthesizerUnavailableError` (with the install hint) if eSpeak NG is missing."""
    loader = _import_loader()
    if not os.path.exists(loader.get_library_path()):
        raise SynthesizerUnavailableError(
            f"eSpeak NG library not found at {loader.get_library_path()}; {INSTALL_HINT}"
        )


def synthesize_in_subprocess(
    texts: Sequence[str], voice: VoiceSettings, seed: int
) -> tuple[int, list[bytes]]:
    """Synthesizes ``texts`` in order in a fresh Python process (deterministic given ``seed``).

    Returns (sample rate in Hz, one int16 little-endian byte string per text).
    """
    request = json.dumps({"seed": seed, "voice": asdict(voice), "texts": list(texts)})
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        input=request.encode(),
        capture_output=True,
        check=False,
    )
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"the eSpeak NG worker failed (exit code {completed.returncode}): "
            f"{message[-1] if message else 'no message'}"
        )
    reply = completed.stdout
    (sample_rate,) = struct.unpack_from("<I", reply, 0)
    offset = 4
    pcm_per_text = []
    for _ in texts:
        (count,) = struct.unpack_from("<Q", reply, offset)
        offset += 8
        pcm_per_text.append(reply[offset : offset + 2 * count])
        offset += 2 * count
    if offset != len(reply):
        raise RuntimeError(f"the eSpeak NG worker reply has {len(reply) - offset} unexpected bytes")
    return sample_rate, pcm_per_text


if __name__ == "__main__":
    _run_worker()
