"""``emovox classify --segments --plot``: the waveform's envelope with each segment coloured by its emotion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def plot_segments(result, path: str | os.PathLike) -> Path:
    """Draw ``result`` (a :class:`~emovox.segments.pipeline.SegmentedRecording`) to ``path`` (PNG, SVG, PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = result.envelope
    t = np.arange(env.size) * result.envelope_hop_s
    labels = list(result.segments[0].prediction.scores) if result.segments else []
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 3.2))
    top = float(env.max()) if env.size and env.max() > 0 else 1.0
    ax.fill_between(t, -env / top, env / top, color="0.55", lw=0, step="post")  # scaled to the recording's peak
    for seg in result.segments:
        colour = cmap(labels.index(seg.prediction.label) % 10)
        ax.axvspan(seg.start_s, seg.end_s, color=colour, alpha=0.35, lw=0)
        ax.text((seg.start_s + seg.end_s) / 2, 0.92, seg.prediction.label, ha="center", va="top", fontsize=7,
                rotation=90 if seg.end_s - seg.start_s < result.duration_s / 40 else 0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i % 10), alpha=0.5) for i in range(len(labels))]
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=7, ncol=len(labels))
    ax.set_xlim(0, max(result.duration_s, 1e-3))
    ax.set_ylim(-1.05, 1.05)
    ax.set_yticks([])
    ax.set_xlabel("time (s)")
    title = f"{len(result.segments)} speech segment(s) in {result.duration_s:.1f} s"
    ax.set_title(title if result.segments else f"no speech found in {result.duration_s:.1f} s")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
