"""Model families: registry, a training step, save/load, streaming = offline, padding invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emovox.features import FeatureStats, preset
from emovox.modelio import EmotionPipeline, load_model_dir, make_config, save_model
from emovox.models import build_model, count_parameters, model_names
from emovox.models.blocks import AttentiveStatsPool, masked_sequential

FAMILIES = ["cnn", "cnn2d", "crnn", "lstm", "fast"]
#: Small settings so every test runs in well under a second.
TINY = {
    "cnn": {"channels": (16, 16, 24), "hidden": 16},
    "cnn2d": {"channels": (8, 8, 16), "hidden": (16,), "dropout": 0.0},
    "crnn": {"channels": (4, 8, 8), "proj_dim": 16, "rnn_hidden": 8, "attention_dim": 8, "hidden": 16},
    "lstm": {"hidden_size": 16, "num_layers": 2},
    "fast": {"channels": (16, 16, 16), "strides": (2, 1), "attention_dim": 8, "dropout": 0.0},
}



def _n_features(name: str) -> int:
    return 13 if name == "lstm" else 32


def _logits(model, x, lengths=None):
    """``x``: (batch, features, frames) for every family."""
    if model.streaming:
        return model(x.transpose(1, 2), None, lengths)[0]
    return model(x, lengths)


def test_registry_lists_every_family_and_rejects_unknown_names():
    assert set(FAMILIES) <= set(model_names())
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*crnn"):
        build_model("nope", n_features=8, n_classes=2)
    with pytest.raises(ValueError, match="bad settings for model 'crnn'"):
        build_model("crnn", n_features=8, n_classes=2, no_such_option=1)


def test_parameter_budgets():
    """Defaults: seed 000's CNN ~50K, seed 001's 2-D CNN ~120K, the CRNN a few hundred K at most."""
    sizes = {name: count_parameters(build_model(name, n_features=_n_features(name) if name == "lstm" else 64,
                                                n_classes=8)) for name in FAMILIES}
    assert 40_000 < sizes["cnn"] < 60_000
    assert 80_000 < sizes["cnn2d"] < 150_000
    assert 100_000 < sizes["crnn"] < 300_000
    assert 50_000 < sizes["fast"] < 120_000  # the shipped `fast` model: under a third of the CRNN


@pytest.mark.parametrize("name", FAMILIES)
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    nf = _n_features(name)
    model = build_model(name, n_features=nf, n_classes=3, **TINY[name])
    x = torch.randn(12, nf, 40)
    y = torch.arange(12) % 3
    x[y == 1, :4] += 2.0  # something to learn
    x[y == 2, -4:] -= 2.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(_logits(model, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.parametrize("name", FAMILIES)
def test_padding_does_not_change_logits(name):
    """A clip gives the same logits alone or zero-padded in a batch with its length given (eval mode)."""
    torch.manual_seed(1)
    nf = _n_features(name)
    model = build_model(name, n_features=nf, n_classes=4, **TINY[name]).eval()
    lengths = torch.tensor([37, 23, 9, 2])
    x = torch.randn(4, nf, 37)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 0.0  # padding (its value must not matter either)
        x[i, :, n:] += 7.0 * (i + 1)
    with torch.no_grad():  # inference: only the padded frames a real output reads are overwritten
        batch = _logits(model, x, lengths)
        alone = torch.cat([_logits(model, x[i : i + 1, :, : int(n)]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # training: every padded frame is masked out of place
        torch.testing.assert_close(_logits(model, x, lengths).detach(), alone, atol=1e-5, rtol=1e-5)
    # odd and even lengths, strides and pools at every length from 1 to 40 frames
    lengths = torch.arange(40, 0, -3)
    x = torch.randn(len(lengths), nf, 40) + 5.0 * (torch.arange(40) >= lengths[:, None])[:, None, :]
    with torch.no_grad():
        batch = _logits(model, x, lengths)
        alone = torch.cat([_logits(model, x[i : i + 1, :, : int(n)]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_lstm_fast_padded_logits_equal_packed_sequences():
    torch.manual_seed(2)
    model = build_model("lstm", n_features=13, n_classes=5, **TINY["lstm"]).eval()
    x = torch.randn(3, 30, 13)
    lengths = torch.tensor([30, 11, 1])
    with torch.no_grad():
        torch.testing.assert_close(model.padded_logits(x, lengths), model(x, None, lengths)[0], atol=1e-6, rtol=1e-5)


def test_lstm_frame_by_frame_equals_whole_sequence():
    torch.manual_seed(3)
    model = build_model("lstm", n_features=13, n_classes=6, **TINY["lstm"]).eval()
    x = torch.randn(1, 25, 13)
    with torch.no_grad():
        whole, h_whole = model(x)
        hidden = None
        for t in range(x.shape[1]):
            step, hidden = model(x[:, t : t + 1], hidden)
    torch.testing.assert_close(step, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(hidden[0], h_whole[0], atol=1e-6, rtol=1e-5)


def test_masked_blocks_handle_strided_convolutions_exactly():
    torch.manual_seed(4)
    blocks = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, stride=2, padding=1), torch.nn.BatchNorm2d(3),
                                 torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 3, padding=1),
                                 torch.nn.MaxPool2d((2, 2), ceil_mode=True)).eval()
    x = torch.randn(2, 1, 8, 15)
    x[1, ..., 7:] = 5.0
    lengths = torch.tensor([15, 7])
    with torch.no_grad():
        out, new_lengths = masked_sequential(blocks, x, lengths)
        alone = blocks(x[1:, ..., :7])
    assert new_lengths.tolist() == [4, 2] and alone.shape[-1] == 2
    torch.testing.assert_close(out[1:, ..., :2], alone)
    assert float(out[1, ..., 2:].abs().sum()) == 0.0


def test_attentive_stats_pooling_ignores_padding_and_gives_mean_and_std():
    pool = AttentiveStatsPool(4, 3)
    torch.nn.init.zeros_(pool.attention[2].weight)  # uniform attention: plain mean and std
    h = torch.randn(1, 4, 10)
    out = pool(torch.cat([h, torch.full((1, 4, 5), 100.0)], dim=-1), torch.tensor([10]))
    torch.testing.assert_close(out[0, :4], h[0].mean(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, 4:], h[0].std(-1, unbiased=False), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_saved_model_is_rebuilt_from_its_own_config(name, tmp_path):
    torch.manual_seed(5)
    feats = preset("seed003") if name == "lstm" else preset("logmel64").replace(n_mels=32)
    model = build_model(name, n_features=feats.n_features, n_classes=3, **TINY[name]).eval()
    for m in model.modules():  # non-trivial batch-norm statistics must survive too
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    stats = FeatureStats(mean=np.linspace(-50, -20, feats.n_features).tolist(), std=[10.0] * feats.n_features)
    config = make_config(model_name=name, model_kwargs=model.kwargs, features=feats, labels=["a", "b", "c"],
                         stats=stats, temperature=1.7)
    save_model(tmp_path, model, config)
    payload = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert payload["config"]["model"]["kwargs"] == model.kwargs
    loaded = load_model_dir(tmp_path)
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1)[None]
    with torch.no_grad():
        want = EmotionPipeline(model, config).eval()(wave)
        got = loaded.pipeline(wave)
    torch.testing.assert_close(got, want)
    assert loaded.pipeline.labels == ["a", "b", "c"] and float(loaded.pipeline.temperature) == pytest.approx(1.7)


def test_crnn_utterance_norm_is_padding_safe_and_cancels_a_channel_offset(tmp_path):
    torch.manual_seed(4)
    model = build_model("crnn", n_features=32, n_classes=4, **TINY["crnn"], input_norm="utterance").eval()
    lengths = torch.tensor([37, 23, 9, 2])
    x = torch.randn(4, 32, 37)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 5.0 * (i + 1)  # padding values must not matter
    # a per-band offset (a recording's gain and channel colouring, in log-mel) leaves the answer alone
    coloured = x + torch.linspace(-3, 3, 32).view(1, 32, 1)
    with torch.no_grad():
        batch = model(x, lengths)
        alone = torch.cat([model(x[i : i + 1, :, : int(n)]) for i, n in enumerate(lengths)])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(coloured, lengths), batch, atol=1e-4, rtol=1e-4)
        plain = build_model("crnn", n_features=32, n_classes=4, **TINY["crnn"])
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain.eval()(coloured, lengths), plain(x, lengths), atol=1e-3)
    # the setting travels with the saved model
    assert model.kwargs["input_norm"] == "utterance"
    with pytest.raises(ValueError, match="input_norm must be 'global' or 'utterance'"):
        build_model("crnn", n_features=32, n_classes=4, input_norm="speaker")
