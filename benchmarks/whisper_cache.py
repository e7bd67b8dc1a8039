#!/usr/bin/env python
"""Compute and cache a backbone's hidden states for whole corpora, once per clip (resumable).

Training and the benchmarks read the same cache (``emovox.data.backbone_data.HiddenStateCache``: one float16
``(layers, hidden, frames)`` file per clip, keyed by the backbone, the layers and the clip), so an
interrupted run loses at most the clip in flight; run it again to go on. Prints the disk cost per clip
and per corpus.

    python -m benchmarks.whisper_cache --backbone whisper-base --corpora ravdess,crema-d,nemo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_DATA
from emovox.data.backbone_data import HiddenStateCache, load_hidden_states
from emovox.data.cache import default_cache_dir
from emovox.data.corpora import scan
from emovox.models.ssl import parse_layers
from emovox.pretrained.backbone_loading import load_backbone


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="whisper-base")
    p.add_argument("--layers", default="all")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--corpora", default="ravdess,crema-d,nemo")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $EMOVOX_CACHE_DIR or ~/.cache/emovox/features")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    layers = parse_layers(args.layers, backbone.num_layers)
    root = args.cache_dir or default_cache_dir()
    store = HiddenStateCache(root, backbone, layers)
    for corpus in args.corpora.split(","):
        rows = scan(args.data / corpus, with_duration=False)
        t0 = time.perf_counter()
        fs = load_hidden_states(rows, backbone, layers, cache=root, progress=True, desc=corpus)
        took = time.perf_counter() - t0
        size = sum(store.file_for(r.path).stat().st_size for r in fs.rows)
        print(f"{corpus}: {len(fs.rows)} clips ({fs.decoded} computed in {took:.0f} s, "
              f"{took / max(fs.decoded, 1):.3f} s/clip), {len(fs.errors)} unreadable; cache "
              f"{size / 2**30:.2f} GiB, {size / max(len(fs.rows), 1) / 2**20:.2f} MiB per clip, in {store.dir}",
              flush=True)


if __name__ == "__main__":
    main()
