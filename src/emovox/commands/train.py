"""``emovox train``: train a model folder from one or more corpora (seed 000's flags work as written)."""

from __future__ import annotations

import argparse

HELP = "train a speech emotion model (cnn, cnn2d, lstm, crnn, ssl) on one or more corpora"

EPILOG = """\
examples:
  emovox train --data_dir data --epochs 50 --batch_size 32 --use_augmentation      (seed 000)
  emovox train --data_dir ravdess crema-d --labels core4 --model crnn --folds 5 --output_dir runs/cv
  emovox train --data_dir ravdess --model lstm --test-speakers 1,2,3,4 --save-full-model
  emovox train --data_dir ravdess --model ssl --backbone facebook/wav2vec2-base --labels core4   (seed 002)
  emovox train --data_dir ravdess crema-d nemo --labels ekman7 --model ssl --backbone whisper-base --ssl-head mean
      (like the default model: a linear probe on Whisper-base's layer means, fit in seconds once states are cached)
  torchrun --nproc_per_node 4 -m emovox.cli train --data_dir ravdess --model crnn ...   (DistributedDataParallel)

The defaults are seed 000's. The benchmark's recipe (benchmarks/speech_benchmark.py), better on
real corpora: --use_augmentation --mixup 0.2 --lr 0.003 --lr-schedule cosine --epochs 60
--early_stopping_patience 12 (and --threads 1 on a busy machine).

--data_dir with a labels.csv inside reads it (paths relative to the CSV); otherwise the corpus is
recognised from its file names (ravdess, crema-d, tess, emodb, savee, nemo) or class folders.
Features are cached in --cache-dir (default $EMOVOX_CACHE_DIR or ~/.cache/emovox/features).
--model ssl: a pretrained speech backbone with a small trained head: Whisper (whisper-base, whisper-tiny.en:
installed packages, offline; or a CTranslate2 / Hugging Face Whisper folder) or wav2vec2 / HuBERT / WavLM (a
Hugging Face id, downloaded when the hub is reachable, or a save_pretrained folder); frozen by default, its
hidden states are cached per clip in --cache-dir (float16); see docs/ssl.md. Under torchrun, --batch_size is the global batch.
--save-full-model writes model_full.pth (frame models) or, for --model lstm, seed 003's model.pth and
model_weights.pth plus model_torchscript.pt: model.pth is a pickle (torch >= 2.6 loads it only with
torch.load(path, weights_only=False), emovox must be importable, and loading it runs code: only from a
trusted source); model_torchscript.pt takes the same forward(x, hidden) and needs neither (torch.jit.load).
best_model.pth holds tensors only and loads with weights_only=True. For seed 003's backend loop, which
computes its own MFCC, train with --features framewise-librosa-mfcc13 (its exact features).
"""


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def _add(p, *names, **kw):
    p.add_argument(*names, **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..features import PRESETS
    from ..training import LABEL_SCOPES, TrainConfig

    p.epilog = EPILOG
    g = p.add_argument_group("data (seed 000)")
    _add(g, "--data_dir", "--data-dir", dest="data_dir", nargs="+", action="extend", required=True, metavar="DIR",
         help="corpus folder(s); several are merged (repeat the flag or list them)")
    _add(g, "--csv_path", "--csv-path", dest="csv_path", default=None,
         help="labels CSV (path,label[,speaker]); default DATA_DIR/labels.csv when present")
    _add(g, "--corpus", nargs="+", action="extend", default=None, metavar="NAME",
         help="corpus layout per data dir (ravdess, crema-d, tess, emodb, savee, nemo, csv, folders); "
              "default: detected")
    _add(g, "--labels", default=None,
         help="target labels: a taxonomy (ravdess8, ekman7, crema6, basic5, app6, core4), a list 'a,b,c' (in that "
              "order), merges 'disgust=angry,calm=neutral', or both 'happy,sad,angry,neutral,disgust=angry'; "
              "clips it cannot express are dropped and counted (app6 takes disgust as angry)")
    g = p.add_argument_group("model and features")
    _add(g, "--model", default="crnn",
         help="model family: cnn (seed 000), cnn2d (seed 001), lstm (seed 003), crnn, ssl (seed 002)")
    _add(g, "--model-option", dest="model_options", action="append", default=None, metavar="KEY=VALUE",
         help="a model setting (repeatable), VALUE as JSON when it parses (dropout=0, channels=[32,32]), "
              "else a string")
    _add(g, "--features", default=None, choices=sorted(PRESETS),
         help="feature preset (default: logmel128 for crnn, seed003 for lstm, waveform for ssl, logmel64 otherwise); "
              "framewise-librosa-mfcc13 is seed 003's backend pipeline exactly")
    _add(g, "--n_mels", "--n-mels", dest="n_mels", type=int, default=None, help="mel bands (overrides the preset)")
    _add(g, "--time_steps", "--time-steps", dest="time_steps", type=int, default=None,
         help="fixed number of input frames (crop/pad, seed 000's fixed input); default: variable length")
    _add(g, "--sample_rate", "--sample-rate", dest="sample_rate", type=int, default=None,
         help="sample rate in Hz (overrides the preset's 16000)")
    g = p.add_argument_group("pretrained backbone (--model ssl, seed 002)")
    _add(g, "--backbone", default=None, metavar="NAME_OR_DIR",
         help="whisper-base or whisper-tiny.en (installed packages: offline), a CTranslate2 Whisper folder, a "
              "Hugging Face model id (openai/whisper-base, facebook/wav2vec2-base, facebook/hubert-base-ls960, "
              "microsoft/wavlm-base-plus) or a local save_pretrained folder")
    _add(g, "--backbone-revision", dest="backbone_revision", default=None, help="hub branch, tag or commit")
    _add(g, "--finetune-backbone", dest="finetune_backbone", type=int, default=0, metavar="N",
         help="train the top N transformer layers too (0: frozen backbone, hidden states cached once per clip)")
    _add(g, "--bundle-backbone", dest="bundle_backbone", action="store_true",
         help="copy the backbone into OUTPUT_DIR/backbone so the model folder is self-contained (otherwise "
              "it references the backbone by id or path)")
    _add(g, "--ssl-layers", dest="ssl_layers", default=None, metavar="LAYERS",
         help="hidden layers the head weighs: a range '6-12' or a list '0,4,8' (0: the transformer input; "
              "None: all); fewer layers, smaller cache")
    _add(g, "--ssl-head", dest="ssl_head", choices=["cnn", "attention", "mean", "stats"], default="cnn",
         help="1D CNN with mean/std pooling, attentive statistics pooling, mean: standardised per-layer time "
              "means and one linear layer (a linear probe), or stats: means and log standard deviations (a probe)")
    _add(g, "--probe-c", dest="probe_c", type=_floats, default=None, metavar="C,C,...",
         help="the 'mean' and 'stats' heads are fit as a logistic-regression probe: inverse L2 strengths to try, "
              "the best on "
              "validation UAR kept (default: five from 0.001 to 0.1, listed in the training log)")
    g = p.add_argument_group("training")
    _add(g, "--epochs", type=int, default=50)
    _add(g, "--batch_size", "--batch-size", dest="batch_size", type=int, default=32)
    _add(g, "--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    _add(g, "--weight-decay", dest="weight_decay", type=float, default=1e-2)
    _add(g, "--lr-schedule", dest="lr_schedule", choices=["noam", "cosine"], default="noam",
         help="warmup then 1/sqrt(step) (noam) or cosine to --epochs")
    _add(g, "--use_augmentation", "--use-augmentation", dest="use_augmentation", action="store_true",
         help="noise, gain, time shift, speed perturbation and SpecAugment on training data")
    _add(g, "--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta(ALPHA, ALPHA) (frame models); 0: off")
    _add(g, "--class-balance", dest="class_balance", choices=["loss", "sampler", "none"], default="loss",
         help="counter class imbalance by a weighted loss or a balanced sampler")
    _add(g, "--label-scope", dest="label_scope", choices=LABEL_SCOPES, default=TrainConfig.label_scope,
         help="corpus: each clip's loss covers only the labels its corpus has in the training data, so merged "
              "corpora that lack a class (CREMA-D: surprised) do not teach 'never that class'; all: every label")
    _add(g, "--crop-seconds", dest="crop_s", type=float, default=3.0,
         help="training crop length for frame models (evaluation uses whole clips)")
    _add(g, "--streaming-loss", dest="streaming_loss", choices=["frames", "last"], default="frames",
         help="streaming models (lstm): train the label at every frame after the first 0.5 s, or only at "
              "the last frame (seed 003)")
    _add(g, "--early_stopping_patience", "--early-stopping-patience", dest="patience", type=int, default=5,
         help="epochs without validation UAR improvement before stopping (0: off)")
    _add(g, "--seed", type=int, default=0)
    _add(g, "--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    g = p.add_argument_group("splits")
    _add(g, "--split", choices=["speaker", "stratified"], default="speaker",
         help="speaker-independent (default) or stratified random splits")
    _add(g, "--val_split", "--val-split", dest="val_split", type=float, default=0.2,
         help="share of the training data held out for validation (whole speakers when known)")
    _add(g, "--test-speakers", "--test_speakers", dest="test_speakers", default=None,
         help="comma-separated speakers held out as the test set (e.g. 1,2 or ravdess_01)")
    _add(g, "--folds", type=int, default=None, help="K-fold cross-validation by speaker: one model per fold")
    _add(g, "--fold", type=int, default=None, help="with --folds: train only this fold (1-based)")
    g = p.add_argument_group("output and resources")
    _add(g, "--output_dir", "--output-dir", dest="output_dir", default="outputs")
    _add(g, "--save-full-model", "--save_full_model", dest="save_full_model", action="store_true",
         help="also write model_full.pth, or for lstm seed 003's model.pth + model_weights.pth and a pickle-free "
              "model_torchscript.pt (pickles: unsafe to load from untrusted sources)")
    _add(g, "--cache-dir", dest="cache_dir", default=None, help="feature cache folder")
    _add(g, "--no-cache", dest="no_cache", action="store_true", help="do not read or write the feature cache")
    _add(g, "--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
         help="threads decoding and featurising audio on the first pass (default: min(4, CPUs))")
    _add(g, "--device", default="auto",
         help="auto (CUDA when available), cpu, cuda or cuda:N")
    _add(g, "--threads", type=int, default=None,
         help="torch intra-op threads (default: torch's choice; 1 is often fastest on a shared or busy machine)")
    _add(g, "--progress", dest="progress", action=argparse.BooleanOptionalAction, default=None,
         help="progress bars (default: when stderr is a terminal)")


def load_rows(data_dirs, corpora=None, csv_path=None):
    """Manifest rows of every data dir (merged), following seed 000's --csv_path convention."""
    from pathlib import Path

    from ..corpora import CorpusError, scan

    corpora = list(corpora or [])
    if corpora and len(corpora) not in (1, len(data_dirs)):
        raise CorpusError(f"give one --corpus for all data dirs or one per data dir ({len(data_dirs)}), "
                          f"got {len(corpora)}")
    if csv_path is not None:
        if len(data_dirs) > 1:
            raise CorpusError("--csv_path works with a single --data_dir")
        return scan(Path(csv_path), "csv", with_duration=False)
    rows = []
    for i, d in enumerate(data_dirs):
        corpus = corpora[i] if len(corpora) == len(data_dirs) else (corpora[0] if corpora else None)
        rows += scan(Path(d), corpus, with_duration=False)
    return rows


def model_kwargs(args) -> dict:
    """``--model-option`` settings, plus the backbone options for ``--model ssl``."""
    import json

    kwargs = {}
    for opt in args.model_options or []:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-option takes KEY=VALUE, got {opt!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    ssl_given = [f for f, v in (("--backbone", args.backbone), ("--backbone-revision", args.backbone_revision),
                                ("--finetune-backbone", args.finetune_backbone), ("--bundle-backbone", args.bundle_backbone),
                                ("--ssl-layers", args.ssl_layers), ("--ssl-head", args.ssl_head != "cnn")) if v]
    if args.model != "ssl":
        if ssl_given:
            raise ValueError(f"{', '.join(ssl_given)}: only with --model ssl")
        return kwargs
    if not args.backbone:
        raise ValueError("--model ssl needs --backbone (a Hugging Face model id or a local checkpoint folder)")
    kwargs.update({"backbone": args.backbone, "finetune_layers": args.finetune_backbone, "head": args.ssl_head})
    if args.backbone_revision:
        kwargs["revision"] = args.backbone_revision
    if args.ssl_layers:
        kwargs["layers"] = args.ssl_layers
    if args.bundle_backbone:
        kwargs["bundle_backbone"] = True
    return kwargs


def run(args) -> int:
    from .. import distributed

    distributed.init_from_env()  # no-op unless launched by torchrun with several processes
    try:
        return _run(args, rank0=distributed.is_rank0())
    finally:
        distributed.destroy()


def _run(args, *, rank0: bool = True) -> int:
    from ..data import default_cache_dir
    from ..features import preset
    from ..training import DEFAULT_FEATURES, TrainConfig, run_training

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = load_rows(args.data_dir, args.corpus, args.csv_path)
    feats = preset(args.features or DEFAULT_FEATURES.get(args.model, "logmel64"))
    changes = {}
    if args.n_mels is not None:
        changes["n_mels"] = args.n_mels
    if args.time_steps is not None:
        changes["num_frames"] = args.time_steps
    if args.sample_rate is not None:
        changes["sample_rate_hz"] = args.sample_rate
    if changes:
        feats = feats.replace(**changes)
    cfg = TrainConfig(
        model=args.model, model_kwargs=model_kwargs(args), features=feats.to_dict(), labels=args.labels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        val_split=args.val_split, split=args.split,
        test_speakers=[s for s in args.test_speakers.split(",") if s.strip()] if args.test_speakers else None,
        folds=args.folds, fold=args.fold, seed=args.seed, augment=args.use_augmentation, mixup_alpha=args.mixup,
        class_balance=args.class_balance, label_scope=args.label_scope, crop_s=args.crop_s,
        streaming_loss=args.streaming_loss, early_stopping_patience=args.patience,
        num_workers=args.num_workers, device=args.device, probe_c=args.probe_c,
    )
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    meta = {"data_dirs": [str(d) for d in args.data_dir], "csv_path": args.csv_path}
    results = run_training(rows, cfg, args.output_dir, cache=cache, resume=args.resume,
                           save_full_model=args.save_full_model, meta=meta,
                           progress=args.progress if rank0 else False, echo=print if rank0 else None)
    return 0 if results else 1
