"""Speed of the pretrained-backbone (ssl) hybrid: cache extraction, training epochs, inference.

Random-weight backbones built from a config (no download): ``tiny`` (the tests' size: 2 layers x
32) and ``base`` (wav2vec2-base dimensions: 7 conv layers of 512, 12 transformer layers x 768,
12 heads, 3072 feed-forward; 94 M parameters). Each is saved with ``save_pretrained`` and loaded
through emovox's real path (:class:`emovox.models.ssl.SSLHybrid` → :func:`emovox.pretrained.backbone_loading.load_backbone`).
Synthetic audio: ``--clips`` clips of ``--seconds`` (harmonics with a moving pitch plus noise).

Per size and precision (fp32; bf16 autocast on CUDA, or with ``--cpu-bf16``):

- ``extract``: frozen-backbone hidden states per clip, as the trainer fills its cache (clips/s);
- ``frozen epoch``: one training epoch of the head on those states (what ``--model ssl`` does
  after the first run: seconds, clips/s);
- ``finetune epoch``: one training epoch with the top ``--finetune-layers`` backbone layers
  trained, the backbone run on every batch (seconds, clips/s);
- ``inference``: the whole pipeline on batches of ``--batch-size`` clips (clips/s), and one clip
  alone (ms).

CUDA timings synchronise before reading the clock; each phase runs one warm-up batch first.
Peak GPU memory per phase is reported on CUDA.

    python -m benchmarks.ssl_gpu --device cuda                  # tiny and base, fp32 and bf16
    python -m benchmarks.ssl_gpu --quick                        # a CPU smoke run (tiny, few clips)
    python -m benchmarks.ssl_gpu --device cuda --json out.json  # also write the results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=2),
    # facebook/wav2vec2-base's dimensions
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                 num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
                 do_stable_layer_norm=False),
}


def build_backbone(size: str, folder: Path) -> Path:
    from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    AutoModel.from_config(Wav2Vec2Config(**SIZES[size])).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


def synthetic_audio(n: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    clips = []
    for _ in range(n):
        f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 10)) * 0.1 + 0.01 * rng.standard_normal(len(t))
        clips.append(x.astype(np.float32))
    return clips


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None)


def batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def bench_size(size: str, folder: Path, clips: list[np.ndarray], args, device: torch.device, precision: str) -> dict:
    from emovox.data.backbone_data import StateBatches, WaveBatches
    from emovox.models.ssl import SSLHybrid

    n = len(clips)
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 4, n))
    out: dict = {"size": size, "precision": precision, "device": str(device), "clips": n, "seconds": args.seconds}

    # -- frozen: extraction (per clip, as the trainer's cache) and head epochs on the states
    torch.manual_seed(0)
    model = SSLHybrid(n_features=1, n_classes=4, backbone=str(folder), dropout=0.0).to(device)
    model.backbone.precision = precision
    out["parameters_backbone"] = sum(p.numel() for p in model.backbone.parameters())
    out["parameters_head"] = sum(p.numel() for n_, p in model.named_parameters() if not n_.startswith("backbone."))
    waves = [torch.from_numpy(c)[None].to(device) for c in clips]
    with torch.inference_mode():
        model.backbone.clip_states(waves[0], model.layers)  # warm-up
        with Timer(device) as t:
            states = [model.backbone.clip_states(w, model.layers)[0].cpu().numpy().astype(np.float16) for w in waves]
    out["extract_clips_per_s"] = n / t.seconds
    out["extract_peak_mb"] = t.peak_mb
    out["cache_mb_per_audio_s"] = states[0].nbytes / 2**20 / args.seconds

    sb = StateBatches(crop_frames=None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng = np.random.default_rng(0)
    model.train()

    def head_step(idx):
        x, lengths = sb.train_batch([states[i] for i in idx], rng)
        loss = torch.nn.functional.cross_entropy(model(x.to(device), lengths), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    head_step(list(range(min(n, args.batch_size))))
    with Timer(device) as t:
        for _ in range(args.epochs):
            for idx in batches(n, args.batch_size):
                head_step(idx)
    out["frozen_epoch_s"] = t.seconds / args.epochs
    out["frozen_clips_per_s"] = n * args.epochs / t.seconds
    out["frozen_peak_mb"] = t.peak_mb

    # -- inference: the whole pipeline (backbone + head) on batches, and one clip alone
    model.eval()
    batch = torch.stack([torch.from_numpy(c) for c in clips])
    with torch.inference_mode():
        model(batch[: args.batch_size, None].to(device))
        with Timer(device) as t:
            for idx in batches(n, args.batch_size):
                model(batch[idx, None].to(device))
        out["inference_clips_per_s"] = n / t.seconds
        out["inference_peak_mb"] = t.peak_mb
        with Timer(device) as t:
            for i in range(min(n, 8)):
                model(batch[i : i + 1, None].to(device))
        out["inference_one_clip_ms"] = 1000 * t.seconds / min(n, 8)
    del model, opt
    states.clear()  # free the in-memory states before the fine-tune timing

    # -- fine-tuning the top layers: the backbone runs on every batch
    if args.finetune_layers:
        torch.manual_seed(0)
        model = SSLHybrid(n_features=1, n_classes=4, backbone=str(folder), dropout=0.0,
                          finetune_layers=min(args.finetune_layers, SIZES[size]["num_hidden_layers"])).to(device)
        model.backbone.precision = precision
        model.train()
        wb = WaveBatches(crop_samples=None)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        out["parameters_trained_finetune"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def ft_step(idx):
            x, lengths = wb.train_batch([clips[i] for i in idx], rng)
            loss = torch.nn.functional.cross_entropy(model(x.to(device), lengths), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ft_step(list(range(min(n, args.batch_size))))
        with Timer(device) as t:
            for idx in batches(n, args.batch_size):
                ft_step(idx)
        out["finetune_layers"] = model.finetune_layers
        out["finetune_epoch_s"] = t.seconds
        out["finetune_clips_per_s"] = n / t.seconds
        out["finetune_peak_mb"] = t.peak_mb
        del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, base")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each synthetic clip")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="frozen-head epochs timed (averaged)")
    p.add_argument("--finetune-layers", type=int, default=2, help="top backbone layers trained in the fine-tune "
                   "timing (0: skip it)")
    p.add_argument("--precisions", default=None, help="fp32,bf16 (default: both on CUDA, fp32 on CPU)")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny only, 8 clips of 2 s, 1 epoch")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random backbones only: never touch the network
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.clips, args.seconds, args.epochs = "tiny", 8, 2.0, 1
        args.batch_size = min(args.batch_size, 4)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    precisions = (args.precisions.split(",") if args.precisions else
                  (["fp32", "bf16"] if device.type == "cuda" or args.cpu_bf16 else ["fp32"]))
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads()}
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    clips = synthetic_audio(args.clips, args.seconds)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            if size not in SIZES:
                p.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
            folder = build_backbone(size, Path(tmp) / size)
            for prec in precisions:
                r = bench_size(size, folder, clips, args, device, prec)
                results.append(r)
                print(f"{size:>5} {prec:>4} on {device}: extract {r['extract_clips_per_s']:8.1f} clips/s | frozen epoch "
                      f"{r['frozen_epoch_s']:7.3f} s ({r['frozen_clips_per_s']:8.1f} clips/s) | "
                      + (f"finetune-{r['finetune_layers']} epoch {r['finetune_epoch_s']:7.2f} s "
                         f"({r['finetune_clips_per_s']:7.1f} clips/s) | " if "finetune_epoch_s" in r else "")
                      + f"inference {r['inference_clips_per_s']:8.1f} clips/s, one clip "
                      f"{r['inference_one_clip_ms']:7.1f} ms"
                      + (f" | peak GPU MB extract/frozen/finetune/infer {r['extract_peak_mb']:.0f}/"
                         f"{r['frozen_peak_mb']:.0f}/{r.get('finetune_peak_mb') or 0:.0f}/{r['inference_peak_mb']:.0f}"
                         if device.type == "cuda" else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "settings": vars(args), "results": results},
                                              indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
