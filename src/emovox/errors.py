"""Every exception emovox raises at its boundaries, in one module that imports nothing from emovox.

Each is a :class:`ValueError` whose message names what was wrong and what is accepted; the CLI
turns it into one line and a non-zero exit, the server into a 4xx JSON body. They are also
re-exported from the modules that raise them (``emovox.audio.AudioError``,
``emovox.modelio.ModelLoadError``, ...), so either import works. One exception lives elsewhere:
``emovox.runtime.onnx_backend.OnnxModelError``, since that module runs on its own, without the package.
"""

from __future__ import annotations

__all__ = [
    "AudioError",
    "BackboneError",
    "CheckpointError",
    "CorpusError",
    "ExportError",
    "LabelError",
    "ModelLoadError",
    "OptionError",
    "TextError",
    "TextModelError",
    "TrainingError",
    "WhisperWeightsError",
]


class AudioError(ValueError):
    """Audio that cannot be used: the message names the problem (and the source when known)."""


class LabelError(ValueError):
    """An unknown label or taxonomy; the message lists what is accepted."""


class CorpusError(ValueError):
    """A corpus folder, file name or label file that cannot be used; the message names it."""


class ModelLoadError(ValueError):
    """A model folder or file that cannot be used; the message names the file and the problem."""


class BackboneError(ModelLoadError):
    """A backbone that cannot be found, loaded or used; the message says what was tried and what to do."""


class WhisperWeightsError(ValueError):
    """Whisper weights that cannot be found or read; the message names the file and what to do."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


class TrainingError(ValueError):
    """Training cannot start or continue (bad data, labels, split or checkpoint); the message says why."""


class OptionError(ValueError):
    """A config file or option layer that cannot be used; the message names the file, key and problem."""


class ExportError(ValueError):
    """An export that cannot be done; the message says what and why. Nothing is left at the output."""


class TextError(ValueError):
    """Bad text input (empty text, undecodable file, malformed TSV line); the message says which."""


class TextModelError(ValueError):
    """A text model folder or file that cannot be used; the message names the file and the problem."""


class AdaptationError(ValueError):
    """A model or clips that ``emovox adapt`` cannot use; the message says why."""


class ServeStartError(ValueError):
    """A serving engine (Ray Serve) that did not start: what did not, and what to try."""
