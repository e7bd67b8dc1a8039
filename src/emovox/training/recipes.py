"""Training recipes: the model family, features, labels and training settings of one source system.

``emovox train --recipe NAME`` applies a recipe's settings as a layer of option values; the layers are
emovox's defaults < the recipe < a ``--config`` file < flags given on the command line, so any flag
the user gives still wins. Settings are keyed by the ``emovox train`` option names (the ``dest`` of
each flag, as in a ``--config`` file). ``model_settings`` only apply while the model stays the
recipe's own family (a ``--recipe hybrid --model crnn`` run does not get the hybrid's backbone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # the source system, in words
    summary: str  # what the recipe sets, one line for --help
    settings: dict[str, Any]
    model_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.settings["model"]

    def layer(self, model: str) -> dict[str, Any]:
        """The option values this recipe sets when the run's model family is ``model``."""
        return {**self.settings, **(self.model_settings if model == self.model else {})}


#: The hybrid's head: Conv1d(512→18, 5) → Conv1d(18→18, 3) → mean/std pooling → 36→64 → 64→8 on
#: whisper-base's 512-wide states: 49,983 trainable parameters with 8 labels (seed 002's "~50K").
HYBRID_HEAD = {"channels": 18, "hidden": 64}

# Seed recipes name their features by the seed's alias (seed000 = logmel64-hop512-100f, seed001 =
# logmel64-hop512-32f: emovox.features.PRESET_ALIASES), the value a recipe settles --features to.
RECIPES: dict[str, Recipe] = {
    "mobile": Recipe(
        "mobile", "seed 000, the Core ML mobile CNN",
        "cnn (~50K parameters) on 64 mels x 100 frames (FFT 2048, hop 512), basic5 labels in the seed's order; "
        "writes emotion_classifier.onnx and EmotionClassifier.mlmodel",
        {"model": "cnn", "features": "seed000", "labels": "basic5", "epochs": 50, "batch_size": 32,
         "export": "onnx,coreml", "export_input": "features"}),
    "backend": Recipe(
        "backend", "seed 001, the Keras backend CNN",
        "cnn2d on 64 mels x 32 frames (about 1 s: FFT 2048, hop 512), basic5 labels",
        {"model": "cnn2d", "features": "seed001", "labels": "basic5"}),
    "hybrid": Recipe(
        "hybrid", "seed 002, the FastAPI wav2vec2 hybrid",
        "frozen whisper-base backbone + a CNN head of about 50K trainable parameters, ravdess8 labels, "
        "batch 8, 20 epochs (--backbone facebook/wav2vec2-base for the seed's own backbone)",
        {"model": "ssl", "labels": "ravdess8", "batch_size": 8, "epochs": 20},
        {"backbone": "whisper-base", "ssl_head": "cnn",
         "model_options": [f"{k}={v}" for k, v in HYBRID_HEAD.items()]}),
    "streaming": Recipe(
        "streaming", "seed 003, the streaming MFCC-LSTM",
        "lstm on seed 003's backend features (framewise-librosa-mfcc13), app6 labels (its front-end's classes "
        "0-5), --save-full-model (model.pth, model_weights.pth, model_torchscript.pt)",
        {"model": "lstm", "features": "framewise-librosa-mfcc13", "labels": "app6", "save_full_model": True}),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}") from None


def recipes_help() -> str:
    """The recipes, one per line, for ``emovox train --help``."""
    import textwrap

    return "\n".join(textwrap.fill(f"{r.name:<10} {r.source}: {r.summary}", width=104, initial_indent="  ",
                                   subsequent_indent=" " * 13, break_on_hyphens=False) for r in RECIPES.values())
