"""Unsupervised adaptation of a probe-head model to a new domain (no labels needed).

A model whose head is a linear probe on pooled encoder states (``--model ssl --ssl-head mean|stats``,
the shipped ``default``) standardises those pooled features with the training clips' mean and
standard deviation. Recordings from another corpus, language, microphone or room shift those
statistics, and the linear layer then reads shifted inputs. Re-estimating the standardisation on
unlabelled clips of the new domain (feature mean and variance alignment, the simplest unsupervised
domain adaptation) moves them back; the linear layer, labels and calibration stay as trained.
``benchmarks/speech_benchmark.py --adapt`` measures what it changes across corpora.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emovox.atomic import write_folder
from emovox.defaults import MIN_ADAPTATION_CLIPS, RUNTIME_DIR
from emovox.errors import AdaptationError

__all__ = ["AdaptationError", "MIN_ADAPTATION_CLIPS", "adapt_model"]



def adapt_model(model: str | os.PathLike, clips: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                cache: Any = True, num_workers: int | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Write a copy of ``model`` (a shipped name or a folder) to ``out_dir`` whose pooled-feature
    standardisation is estimated on ``clips`` (audio files of the target domain, unlabelled).
    Returns the ``adaptation`` record saved in its config."""
    from emovox.data.backbone_data import load_hidden_states
    from emovox.inference import resolve_model_path
    from emovox.modelio import load_model_dir, save_model

    src = Path(model) if Path(model).exists() else resolve_model_path(model)[1]
    loaded = load_model_dir(src)
    net = loaded.pipeline.model
    if getattr(net, "head_kind", None) not in ("mean", "stats"):
        raise AdaptationError(f"{src}: adaptation re-estimates the standardisation of a probe head ('mean' or "
                              f"'stats', as the default model has); this model has none")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise AdaptationError(f"{out}: exists and is not empty; choose a new folder for the adapted model")
    fs = load_hidden_states(list(clips), net.backbone, net.layers, cache=cache, num_workers=num_workers,
                            progress=progress, desc="adapting")
    if len(fs.features) < MIN_ADAPTATION_CLIPS:
        raise AdaptationError(f"adaptation needs at least {MIN_ADAPTATION_CLIPS} readable clips of the target "
                              f"domain, got {len(fs.features)} ({len(fs.errors)} unreadable)")
    net.fit_pooled_stats(net.pooled_rows(fs.features))
    record = {"clips": len(fs.features), "unreadable": len(fs.errors), "source_model": str(src),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "what": "pooled-feature mean and standard deviation re-estimated on unlabelled target clips"}
    config = {**loaded.config, "adaptation": record}

    def fill(staging: Path) -> None:  # the whole folder appears at once, or not at all
        shutil.copytree(src, staging, dirs_exist_ok=True)
        save_model(staging, net, config)
        if (staging / RUNTIME_DIR).is_dir():  # the copied graph holds the old standardisation: build it anew
            from emovox.export.runtime_build import build_runtime

            shutil.rmtree(staging / RUNTIME_DIR)
            build_runtime(staging)

    write_folder(out, fill)
    return record
