"""DistributedDataParallel training under torchrun (2 CPU processes, gloo) equals a single-process run.

What must match (same data, seed and global batch; no dropout, no batch norm, no augmentation —
see emovox/distributed.py for why those differ): validation metrics of every epoch, the reported
metrics, and the weights after training within float summation noise (1e-5). Only rank 0 writes
files and prints.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emovox.cli import main
from emovox.training import distributed as ddp

COMMON = ["--epochs", "2", "--batch_size", "16", "--lr", "0.003", "--val_split", "0.25", "--seed", "3",
          "--threads", "1", "--no-progress", "--model-option", "dropout=0"]


def test_helpers_are_no_ops_in_one_process():
    assert not ddp.is_enabled() and ddp.world_size() == 1 and ddp.rank() == 0 and ddp.is_rank0()
    assert ddp.init_from_env().world_size == 1  # no torchrun environment: nothing happens
    x, t = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert ddp.shard_batch(x, None, t) == (x, None, t)
    w = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(ddp.global_mean_cross_entropy(x, t, t, weight=w), F.cross_entropy(x, t, weight=w))
    np.testing.assert_array_equal(ddp.gather_sharded(lambda items: np.array(items)[:, None] * 2, [1, 2, 3]),
                                  [[2], [4], [6]])
    assert ddp.all_reduce_sum([1, 2.5]) == [1.0, 2.5] and ddp.all_gather_object("a") == ["a"]
    assert ddp.shard_sampler(10, seed=1) is None and ddp.shard_rows(7) == slice(0, 7)
    model = torch.nn.Linear(3, 2)
    wrapped = ddp.wrap_model(model, "cpu", forward=lambda m, a: m(a) * 2)
    torch.testing.assert_close(wrapped(x), model(x) * 2)
    assert list(wrapped.parameters()) == list(model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("backbone") / "w2v"
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    transformers.AutoModel.from_config(cfg).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lstm", "ssl"])
def test_torchrun_two_processes_match_one_process(family, synth_corpus, tmp_path, monkeypatch, request):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = ["--backbone", str(request.getfixturevalue("tiny_backbone"))] if family == "ssl" else []
    args = ["train", "--data_dir", str(synth_corpus), "--model", family, *extra, *COMMON,
            "--cache-dir", str(tmp_path / "cache")]
    n = torch.get_num_threads()
    try:
        assert main([*args, "--output_dir", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(n)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*_torchrun(), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "emovox.cli", *args, "--output_dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/2:") == 1  # only rank 0 talks

    single, multi = tmp_path / "single", tmp_path / "ddp"
    h1 = json.loads((single / "training_history.json").read_text())
    h2 = json.loads((multi / "training_history.json").read_text())
    for a, b in zip(h1, h2, strict=True):
        assert a["val_uar"] == b["val_uar"] and a["val_accuracy"] == b["val_accuracy"]
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    m1 = json.loads((single / "metrics_overall.json").read_text())
    m2 = json.loads((multi / "metrics_overall.json").read_text())
    for key in ("uar", "accuracy", "macro_f1", "best_epoch", "n"):
        assert m1[key] == m2[key], key
    assert m1["temperature"] == pytest.approx(m2["temperature"], rel=1e-3)
    s1 = torch.load(single / "checkpoint.pt", weights_only=True)["model_state"]
    s2 = torch.load(multi / "checkpoint.pt", weights_only=True)["model_state"]
    assert s1.keys() == s2.keys()
    assert max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1) < 1e-5
