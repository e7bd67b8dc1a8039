"""Training a text emotion model: encoder + multi-label head, thresholds tuned on dev.

``frozen``: each text is embedded once (mean-pooled encoder output, cached on disk keyed by
encoder fingerprint, ``max_length`` and file hash) and an MLP head is trained on the vectors
with early stopping on dev macro-F1.

``finetune``: the top ``finetune_layers`` transformer layers are trained with the head. The
hidden states entering the first trained layer are computed once (frozen lower layers, no
dropout) and kept in memory as float16, so an epoch only runs the trained layers. The head is
first fitted on frozen vectors (linear-probe-then-fine-tune), then both are trained with
AdamW, linear warm-up and decay; the epoch with the best dev macro-F1 is kept. The shipped
weights are ``trained - base`` for those layers, as float16 (``encoder_delta.safetensors``).

In both modes the final dev scores come from the saved folder loaded back the way users load
it, and the per-class thresholds are tuned on them (:func:`metrics.tune_thresholds`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from emovox.data.labels import GOEMOTIONS28

from .. import __version__
from .checkpoints import load_checkpoint, remove_checkpoint, run_identity, save_checkpoint
from .data import TextDataset, read_label_names, read_tsv
from .encoder import (
    Encoder,
    cache_key,
    default_cache_dir,
    fingerprint,
    load_cached,
    load_cached_states,
    mean_pool,
    resolve_encoder,
    save_cached,
    save_cached_states,
)
from .evaluation import evaluate_text_model
from .head import MLPHead, multilabel_loss
from .loading import load_text_model
from .metrics import tune_thresholds
from .model import (
    CONFIG_FILE,
    DELTA_FILE,
    FORMAT,
    FORMAT_VERSION,
    HEAD_FILE,
    LABELS_FILE,
    META_FILE,
    save_weights,
    write_json,
)
from .runtime import RUNTIME_DIR

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune")


@dataclass
class TextTrainConfig:
    encoder: str = "minilm"
    mode: str = "frozen"
    finetune_layers: int = 2
    epochs: int | None = None          # default: 60 frozen (early stopping), 3 finetune
    batch_size: int | None = None      # default: 128 frozen, 32 finetune
    lr: float = 1e-3                   # head learning rate
    encoder_lr: float = 5e-5           # fine-tuned layers (finetune mode)
    finetune_head_lr: float = 3e-4     # head while fine-tuning, after the probe phase
    probe_epochs: int = 15             # finetune: head-only epochs on frozen vectors first
    weight_decay: float = 0.01
    warmup_frac: float = 0.06
    loss: str = "bce"                  # bce | focal
    focal_gamma: float = 2.0
    class_weight: str = "sqrt"         # none | sqrt: pos_weight = sqrt(neg/pos), capped at 30
    hidden_dim: int = 512
    dropout: float = 0.1
    max_length: int = 128
    seed: int = 0
    top_k: int = 3
    always_one: bool = False
    patience: int = 8                  # frozen: epochs without dev improvement before stopping
    min_support: int = 5               # labels rarer than this on dev use the global threshold
    embed_batch_size: int = 64
    precision: str = "fp32"            # finetune epochs: fp32 | bf16 autocast (caching and inference: fp32)
    checkpoint_steps: int = 200        # finetune: save the run every this many steps (0: at epoch ends only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"unknown loss {self.loss!r}; accepted: bce, focal")
        if self.class_weight not in ("none", "sqrt"):
            raise ValueError(f"unknown class weighting {self.class_weight!r}; accepted: none, sqrt")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; accepted: fp32, bf16")
        if self.checkpoint_steps < 0:
            raise ValueError(f"checkpoint_steps must be >= 0, got {self.checkpoint_steps}")
        if self.finetune_layers < 1:
            raise ValueError(f"finetune_layers must be >= 1, got {self.finetune_layers}")
        if self.epochs is None:
            self.epochs = 60 if self.mode == "frozen" else 3
        if self.batch_size is None:
            self.batch_size = 128 if self.mode == "frozen" else 32


def _labels_for(train_path: Path, labels_path: str | os.PathLike | None) -> list[str]:
    if labels_path is not None:
        return read_label_names(labels_path)
    beside = train_path.parent / "labels.txt"
    return read_label_names(beside) if beside.is_file() else list(GOEMOTIONS28)


def _pos_weight(targets: np.ndarray, kind: str) -> torch.Tensor | None:
    if kind == "none":
        return None
    pos = targets.sum(0).clip(1)
    return torch.tensor(np.sqrt((len(targets) - pos) / pos).clip(1.0, 30.0), dtype=torch.float32)


def _dev_score(probs: np.ndarray, targets: np.ndarray, min_support: int) -> float:
    from sklearn.metrics import f1_score

    thr, _ = tune_thresholds(probs, targets, min_support=min_support)
    return float(f1_score(targets, probs >= thr, average="macro", zero_division=0))


def _embeddings(encoder: Encoder, data: TextDataset, cache_dir: Path | None, batch_size: int) -> np.ndarray:
    key = cache_key(encoder.ref, encoder.max_length, data.sha256)
    emb = load_cached(cache_dir, key, len(data), encoder.hidden_size)
    if emb is None:
        t0 = time.time()
        ids, _, _ = encoder.tokenize(data.texts)
        emb = encoder.embed_ids(ids, batch_size=batch_size)
        log.info("embedded %d texts of %s in %.0f s", len(data), data.path.name, time.time() - t0)
        save_cached(cache_dir, key, emb)
    return emb


def _train_head(head: MLPHead, x: np.ndarray, y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray,
                cfg: TextTrainConfig, *, epochs: int, batch_size: int, pos_weight: torch.Tensor | None,
                gen: torch.Generator, history: list, phase: str) -> float:
    """Head-only training on fixed vectors; keeps the best dev epoch. Returns its score."""
    xt, yt, dxt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(dev_x)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, stale = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = multilabel_loss(head(xt[idx]), yt[idx], kind=cfg.loss, pos_weight=pos_weight, gamma=cfg.focal_gamma)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            dev_probs = torch.sigmoid(head(dxt)).double().numpy()
        score = _dev_score(dev_probs, dev_y, cfg.min_support)
        history.append({"phase": phase, "epoch": epoch, "train_loss": total / len(xt), "dev_macro_f1_tuned": score})
        log.info("%s epoch %d: loss %.4f, dev macro-F1 (tuned thresholds) %.4f", phase, epoch, total / len(xt), score)
        if score > best + 1e-4:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    return best


def _pad(hidden: list[torch.Tensor], idx: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [hidden[i] for i in idx]
    h = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).float()
    lengths = torch.tensor([len(s) for s in seqs])
    mask = (torch.arange(h.shape[1])[None, :] < lengths[:, None]).long()
    return h, mask


def _bucketed(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (sorted inside chunks of 50 batches)."""
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


@torch.no_grad()
def _top_probs(top: torch.nn.Module, head: MLPHead, hidden: list[torch.Tensor], *, batch_size: int = 128,
               bf16: bool = False) -> np.ndarray:
    top.eval()
    head.eval()
    order = np.argsort([len(h) for h in hidden], kind="stable")
    out = np.zeros((len(hidden), head.n_labels))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        h, mask = _pad(hidden, idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pooled = mean_pool(top(inputs_embeds=h, attention_mask=mask).last_hidden_state, mask)
            logits = head(pooled).float()
        out[idx] = torch.sigmoid(logits).double().numpy()
    return out


def _layer_states(encoder: Encoder, train: TextDataset, dev: TextDataset, first: int, cfg: TextTrainConfig,
                  cache_dir: Path | None) -> tuple[dict, dict]:
    """Hidden states entering layer ``first`` and the frozen mean-pooled vectors of both splits (cached)."""
    hidden, pooled = {}, {}
    for name, data in (("train", train), ("dev", dev)):
        emb_key = cache_key(encoder.ref, encoder.max_length, data.sha256)
        states_key = cache_key(encoder.ref, encoder.max_length, data.sha256, f"states-layer{first}")
        h = load_cached_states(cache_dir, states_key, len(data), encoder.hidden_size)
        p = load_cached(cache_dir, emb_key, len(data), encoder.hidden_size)
        if h is None or p is None:  # one float32 pass gives both (identical to frozen mode's vectors)
            ids, _, _ = encoder.tokenize(data.texts)
            h, p = encoder.hidden_states_at(ids, first, batch_size=cfg.embed_batch_size)
            save_cached_states(cache_dir, states_key, h)
            save_cached(cache_dir, emb_key, p)
        hidden[name], pooled[name] = h, p
    return hidden, pooled


@dataclass
class _FinetuneRun:
    """What a fine-tuning epoch steps and what a checkpoint holds."""

    top: torch.nn.Module
    head: MLPHead
    params: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    identity: dict
    out: Path | None
    best: float = -1.0
    best_state: dict | None = None

    def save(self, epoch: int, step: int, gen_state: torch.Tensor, history: list) -> None:
        """Checkpoint: ``epoch`` runs next, its first ``step`` batches done (``gen_state``: its order's seed)."""
        if self.out is None:
            return
        save_checkpoint(self.out, {
            "identity": self.identity, "epoch": epoch, "step": step, "gen_state": gen_state,
            "rng_state": torch.get_rng_state(), "head": self.head.state_dict(),
            "layers": {n: p.detach() for n, p in self.params.items()}, "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "best": self.best, "best_state": self.best_state, "history": history})

    def restore(self, state: dict, gen: torch.Generator, history: list) -> tuple[int, int]:
        self.head.load_state_dict(state["head"])
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["layers"][n])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.best, self.best_state = float(state["best"]), state["best_state"]
        history[:] = state["history"]
        gen.set_state(state["gen_state"])
        torch.set_rng_state(state["rng_state"])
        return int(state["epoch"]), int(state["step"])


def _finetune(encoder: Encoder, head: MLPHead, train: TextDataset, dev: TextDataset, cfg: TextTrainConfig,
              *, cache_dir: Path | None, pos_weight: torch.Tensor | None, gen: torch.Generator,
              history: list, out: Path | None = None, resume: bool = False) -> dict[str, torch.Tensor]:
    """Fine-tune the top layers with the head (checkpointed in ``out``; ``resume``: continue from there);
    returns the float16 deltas of the best epoch."""
    first = max(0, encoder.num_layers - cfg.finetune_layers)
    t0 = time.time()
    hidden, pooled = _layer_states(encoder, train, dev, first, cfg, cache_dir)
    log.info("hidden states at layer %d for %d + %d texts ready in %.0f s", first, len(train), len(dev),
             time.time() - t0)
    params = encoder.layer_parameters(first)
    base = {n: p.detach().clone() for n, p in params.items()}
    top = encoder.top_stack(first)
    for p in top.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": list(params.values()), "lr": cfg.encoder_lr},
        {"params": list(head.parameters()), "lr": cfg.finetune_head_lr},
    ], weight_decay=cfg.weight_decay)
    lengths = np.array([len(h) for h in hidden["train"]])
    total_steps = math.ceil(len(lengths) / cfg.batch_size) * cfg.epochs
    warmup = max(1, int(cfg.warmup_frac * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    identity = run_identity(cfg, fingerprint(encoder.ref.path), train.sha256, dev.sha256)
    run = _FinetuneRun(top, head, params, opt, sched, identity, out)
    state = load_checkpoint(out, run.identity) if resume and out is not None else None
    head.fit_standardizer(torch.from_numpy(pooled["train"]))
    if state is not None:
        first_epoch, skip = run.restore(state, gen, history)
        log.info("resuming fine-tuning at epoch %d after step %d (best dev macro-F1 so far %.4f)", first_epoch, skip,
                 run.best)
    else:
        run.best = _train_head(head, pooled["train"], train.targets, pooled["dev"], dev.targets, cfg,
                               epochs=cfg.probe_epochs, batch_size=128, pos_weight=pos_weight, gen=gen,
                               history=history, phase="probe")
        log.info("probe (frozen encoder) dev macro-F1 %.4f", run.best)
        first_epoch, skip = 1, 0
    del pooled
    for epoch in range(first_epoch, cfg.epochs + 1):
        _finetune_epoch(run, hidden, lengths, train.targets, dev, cfg, epoch, skip, gen, pos_weight, history)
        skip = 0
    head.load_state_dict(run.best_state["head"])
    return {n: (run.best_state["layers"][n] - base[n]).to(torch.float16) for n in params}


def _finetune_epoch(run: _FinetuneRun, hidden: dict, lengths: np.ndarray, targets: np.ndarray, dev: TextDataset,
                    cfg: TextTrainConfig, epoch: int, skip: int, gen: torch.Generator,
                    pos_weight: torch.Tensor | None, history: list) -> None:
    """One epoch from batch ``skip + 1`` (a resumed run), checkpointed every ``cfg.checkpoint_steps`` steps."""
    bf16 = cfg.precision == "bf16"
    run.top.train()
    run.head.train()
    gen_state = gen.get_state()
    batches = _bucketed(lengths, cfg.batch_size, gen)
    targets_t = torch.from_numpy(targets)
    t1, total, seen = time.time(), 0.0, 0  # a resumed epoch's loss is over the steps run since the resume
    for step, idx in enumerate(batches, 1):
        if step <= skip:
            continue
        h, mask = _pad(hidden["train"], idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run.top(inputs_embeds=h, attention_mask=mask).last_hidden_state
            logits = run.head(mean_pool(out, mask)).float()
        loss = multilabel_loss(logits, targets_t[idx], kind=cfg.loss, pos_weight=pos_weight, gamma=cfg.focal_gamma)
        run.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(run.params.values()) + list(run.head.parameters()), 1.0)
        run.opt.step()
        run.sched.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
        if step % 200 == 0:
            log.info("finetune epoch %d: step %d/%d, loss %.4f, %.0f s", epoch, step, len(batches),
                     total / seen, time.time() - t1)
        if cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0 and step < len(batches):
            run.save(epoch, step, gen_state, history)
    score = _dev_score(_top_probs(run.top, run.head, hidden["dev"], bf16=bf16), dev.targets, cfg.min_support)
    history.append({"phase": "finetune", "epoch": epoch, "train_loss": total / max(1, seen),
                    "dev_macro_f1_tuned": score, "seconds": round(time.time() - t1, 1),
                    **({"resumed_after_step": skip} if skip else {})})
    log.info("finetune epoch %d: loss %.4f, dev macro-F1 (tuned thresholds) %.4f, %.0f s", epoch,
             total / max(1, seen), score, time.time() - t1)
    if score > run.best + 1e-4 or run.best_state is None:
        run.best = score
        run.best_state = {"head": {k: v.detach().clone() for k, v in run.head.state_dict().items()},
                          "layers": {n: p.detach().clone() for n, p in run.params.items()}}
    run.save(epoch + 1, 0, gen.get_state(), history)


def _inference_config(cfg: TextTrainConfig, ref, head: MLPHead, labels: list[str], dev, *, num_layers: int,
                      delta_layers: list[int] | None) -> dict:
    """The model folder's config.json, with provisional thresholds (0.5; tuned on dev afterwards)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "multi-label",
        "activation": "sigmoid",
        "encoder": {**ref.to_dict(), "fingerprint": fingerprint(ref.path), "pooling": "mean",
                    "hidden_size": head.input_dim, "num_layers": num_layers},
        "tokenizer": ref.name,
        "max_length": cfg.max_length,
        "truncation": "texts longer than max_length tokens are cut to their first max_length tokens",
        "labels": labels,
        "head": {"file": HEAD_FILE, **head.config()},
        "encoder_delta": None if delta_layers is None else {
            "file": DELTA_FILE, "layers": delta_layers, "dtype": "float16",
            "rule": "weights = encoder weights + delta"},
        "thresholds": {lab: 0.5 for lab in labels},  # provisional, tuned on dev below
        "global_threshold": 0.5,
        "top_k": cfg.top_k,
        "always_one": cfg.always_one,
        "thresholds_tuned_on": {"path": str(dev.path), "sha256": dev.sha256},
    }


def train_text_model(train_path: str | os.PathLike, dev_path: str | os.PathLike, out_dir: str | os.PathLike,
                     config: TextTrainConfig | None = None, *, labels_path: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None | bool = True, onnx: bool = False,
                     resume: bool = False) -> dict:
    """Train, tune thresholds on ``dev_path``, write the model folder; returns the dev report.

    ``cache_dir``: where frozen-mode embeddings are cached (``True``: ``$EMOVOX_CACHE_DIR`` or
    ``./.emovox-cache``, then ``text/``; ``None``/``False``: no cache). ``onnx``: also write the folder's
    ONNX Runtime graph (``onnx/``, :func:`emovox.text.export.export_text_onnx`); an older one is removed
    either way, since it was built from other weights. ``resume``: a ``finetune`` run continues from the
    checkpoint in ``out_dir`` (:mod:`emovox.text.checkpoints`).
    """
    cfg = config or TextTrainConfig()
    t_start = time.time()
    train_path, dev_path, out = Path(train_path), Path(dev_path), Path(out_dir)
    labels = _labels_for(train_path, labels_path)
    train = read_tsv(train_path, len(labels))
    dev = read_tsv(dev_path, len(labels))
    cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    ref = resolve_encoder(cfg.encoder)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / RUNTIME_DIR, ignore_errors=True)  # an older model's graph

    history: list[dict] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        encoder = Encoder(ref, max_length=cfg.max_length)
        head = MLPHead(encoder.hidden_size, len(labels), hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
        pos_weight = _pos_weight(train.targets, cfg.class_weight)
        delta = None
        dev_emb = None
        if cfg.mode == "frozen":
            emb = _embeddings(encoder, train, cache, cfg.embed_batch_size)
            dev_emb = _embeddings(encoder, dev, cache, cfg.embed_batch_size)
            head.fit_standardizer(torch.from_numpy(emb))
            _train_head(head, emb, train.targets, dev_emb, dev.targets, cfg, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, pos_weight=pos_weight, gen=gen, history=history, phase="frozen")
        else:
            delta = _finetune(encoder, head, train, dev, cfg, cache_dir=cache, pos_weight=pos_weight,
                              gen=gen, history=history, out=out, resume=resume)
    num_layers = encoder.num_layers
    first = max(0, num_layers - cfg.finetune_layers)
    del encoder
    t_train = time.time() - t_start

    inference_config = _inference_config(cfg, ref, head, labels, dev, num_layers=num_layers,
                                         delta_layers=None if delta is None else list(range(first, num_layers)))
    save_weights(out / HEAD_FILE, head.state_dict())
    if delta is not None:
        save_weights(out / DELTA_FILE, delta, metadata={"rule": "weights = encoder weights + delta"})
    write_json(out / LABELS_FILE, labels)
    write_json(out / CONFIG_FILE, inference_config)

    # Dev scores from the saved folder, loaded as users load it; thresholds tuned on them.
    model = load_text_model(out, backend="torch")
    if dev_emb is not None:
        dev_probs = model.scores_from_embeddings(dev_emb)
    else:
        dev_probs, _, _ = model.probabilities(dev.texts, batch_size=cfg.embed_batch_size)
    thresholds, global_t = tune_thresholds(dev_probs, dev.targets, min_support=cfg.min_support)
    inference_config["thresholds"] = {lab: float(t) for lab, t in zip(labels, thresholds)}
    inference_config["global_threshold"] = float(global_t)
    write_json(out / CONFIG_FILE, inference_config)
    model.thresholds, model.global_threshold = thresholds, global_t

    report = evaluate_text_model(model, dev, out_dir=out, probs=dev_probs, crossfit=True, seed=cfg.seed)
    import transformers

    meta = {
        "name": f"emovox text emotion ({ref.name}, {cfg.mode})",
        "task": "multi-label text emotion classification (sigmoid + per-class thresholds)",
        "seed": cfg.seed,
        "data": {"train": {"path": str(train.path), "sha256": train.sha256, "n_examples": len(train)},
                 "dev": {"path": str(dev.path), "sha256": dev.sha256, "n_examples": len(dev),
                         "use": "model selection (epoch) and threshold tuning"}},
        "labels": labels,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "emovox_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "platform": platform.platform(),
        "train_config": asdict(cfg),
        "training_seconds": round(t_train, 1),
        "history": history,
        "dev_macro_f1_per_class_thresholds": report["per_class_thresholds"]["macro_f1"],
        "notes": ("Thresholds and the kept epoch were chosen on dev, so dev figures are optimistic; "
                  "per_class_thresholds_crossfit in metrics_overall.json estimates unseen-text macro-F1."),
    }
    write_json(out / META_FILE, meta)
    remove_checkpoint(out)  # the folder holds the finished model now
    if onnx:
        from .export import export_text_onnx

        export_text_onnx(out)
        log.info("wrote %s: the ONNX Runtime graph", out / RUNTIME_DIR)
    log.info("wrote %s: dev macro-F1 %.4f (per-class thresholds), %.4f (global %.2f), %.0f s", out,
             report["per_class_thresholds"]["macro_f1"], report["global_threshold"]["macro_f1"], global_t,
             time.time() - t_start)
    return report
