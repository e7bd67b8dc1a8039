"""The saved-model schema: what ``model_config.json`` (and the ``config`` inside ``best_model.pth``) holds.

:class:`ModelConfig` is the one place that says which keys a model config has; its :meth:`ModelConfig.from_dict`
is strict (an unknown or misspelt key is refused with its name and the file's, never silently dropped) and
reads older files that lack the optional keys. :mod:`emovox.modelio` writes and loads it; readers use its
attributes instead of string keys. ``to_dict()`` gives back the JSON form, the same keys in the same order as
the model folders ``emovox train`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from emovox import __version__
from emovox.audio import check_resample_quality
from emovox.degrade.quality import check_quality_temperature
from emovox.errors import ModelLoadError
from emovox.features import FeatureConfig, FeatureStats

FORMAT = "emovox-model"
FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """``model``: the registered family (``emovox.models``) and the keyword arguments it was built with."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a saved model exactly (see ``docs/architecture.md``, "A model on disk")."""

    model: ModelSpec
    features: FeatureConfig
    labels: list[str]
    #: Per-feature mean/std fitted on the training data (None: no standardisation).
    normalization: FeatureStats | None = None
    #: Calibration: softmax(logits / temperature).
    temperature: float = 1.0
    #: Tensor names used by exports (``features_input``, ``waveform_input``, ``output``); None: the defaults.
    io: dict[str, str] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    emovox_version: str | None = None
    #: Provenance: the training settings (``TrainConfig.to_dict()``) of the run that wrote the model.
    training: dict[str, Any] | None = None
    #: Provenance: what ``emovox adapt`` changed (``emovox.training.adaptation``).
    adaptation: dict[str, Any] | None = None
    #: Calibration under poor input: ``{kind: factor}``, the temperature multiplied by the factor of each of a
    #: recording's quality issues (:mod:`emovox.degrade.quality`); fitted on degraded validation clips.
    quality_temperature: dict[str, float] | None = None
    #: soxr's quality when input at another rate is resampled for this model (``emovox.audio.RESAMPLE_QUALITIES``;
    #: None: ``RESAMPLE_QUALITY``). Set where its answers were measured not to depend on it (the `fast` model).
    resample_quality: str | None = None
    #: Export metadata (Core ML author and licence), when the model sets its own.
    author: str | None = None
    license: str | None = None

    #: Written only when set (older files have none of them).
    _OPTIONAL = ("training", "adaptation", "quality_temperature", "resample_quality", "author", "license")

    @classmethod
    def from_dict(cls, d: Any, *, source: Any = None) -> ModelConfig:
        """Read a saved config; ``source`` (the file it came from) is named in every error."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(d, dict):
            raise ModelLoadError(f"{where}model config is a {type(d).__name__}, not a JSON object")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ModelLoadError(f"{where}unknown model config key(s) {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(known)}")
        missing = [k for k in ("model", "features", "labels") if d.get(k) is None]
        if missing:
            raise ModelLoadError(f"{where}model config lacks {', '.join(map(repr, missing))}")
        if not d["labels"]:
            raise ModelLoadError(f"{where}model config has no labels")
        try:
            check_quality_temperature(d.get("quality_temperature"), where)
            if d.get("resample_quality") is not None:
                check_resample_quality(d["resample_quality"], where)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        return cls(model=_model_spec(d["model"], where), features=_features(d["features"], where),
                   labels=[str(x) for x in d["labels"]],
                   normalization=_stats(d.get("normalization"), where),
                   temperature=float(d.get("temperature", 1.0)), io=d.get("io"),
                   format=d.get("format", FORMAT), format_version=int(d.get("format_version", FORMAT_VERSION)),
                   emovox_version=d.get("emovox_version"),
                   **{k: d[k] for k in cls._OPTIONAL if d.get(k) is not None})

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": self.format,
            "format_version": self.format_version,
            "emovox_version": self.emovox_version or __version__,
            "model": {"name": self.model.name, "kwargs": dict(self.model.kwargs)},
            "features": self.features.to_dict(),
            "normalization": self.normalization.to_dict() if self.normalization is not None else None,
            "labels": list(self.labels),
            "temperature": float(self.temperature),
            "io": dict(self.io) if self.io is not None else None,
        }
        out.update({k: getattr(self, k) for k in self._OPTIONAL if getattr(self, k) is not None})
        return out


def _model_spec(m: Any, where: str) -> ModelSpec:
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise ModelLoadError(f"{where}model config's 'model' must be {{\"name\": ..., \"kwargs\": {{...}}}}, got {m!r}")
    unknown = sorted(set(m) - {"name", "kwargs"})
    if unknown:
        raise ModelLoadError(f"{where}unknown key(s) {', '.join(map(repr, unknown))} in the model config's 'model' "
                             f"(known: 'name', 'kwargs')")
    kwargs = m.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"{where}model config's 'model.kwargs' must be an object, got {kwargs!r}")
    return ModelSpec(name=m["name"], kwargs=dict(kwargs))


def _features(f: Any, where: str) -> FeatureConfig:
    if not isinstance(f, dict):
        raise ModelLoadError(f"{where}model config's 'features' must be an object, got {f!r}")
    try:
        return FeatureConfig.from_dict(f)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}model config's 'features': {e}") from e


def _stats(n: Any, where: str) -> FeatureStats | None:
    if not n:
        return None
    try:
        return FeatureStats.from_dict(n)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}model config's 'normalization' is invalid: {e!r}") from e
