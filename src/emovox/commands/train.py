"""``emovox train``: train a model folder from one or more corpora (the Core ML mobile CNN's flags work as written)."""

from __future__ import annotations

import argparse

HELP = "train a speech emotion model (cnn, cnn2d, lstm, crnn, ssl) on one or more corpora"

EPILOG = """\
recipes (--recipe NAME: the model, features, labels and training settings of one source system):
{recipes}

Every option is settled in layers: emovox's defaults (shown with each option) < the --recipe <
the --config file < the flags given on the command line, so a flag you type always wins.

examples:
  emovox train --recipe mobile --data_dir data --epochs 50 --batch_size 32 --use_augmentation   (the Core ML mobile CNN)
  emovox train --recipe backend --data_dir dataset                                (the Keras backend CNN's class folders)
  emovox train --recipe hybrid --data_dir ravdess --config data/dataset_config.yaml             (the FastAPI wav2vec2 hybrid)
  emovox train --recipe streaming --data_dir data/RAVDESS --output_dir src/api                  (the streaming MFCC-LSTM)
  emovox train --data_dir ravdess crema-d --labels core4 --model crnn --folds 5 --output_dir runs/cv
  emovox train --data_dir ravdess crema-d nemo --labels ekman7 --model ssl --backbone whisper-base --ssl-head mean
      (like the default model: a linear probe on Whisper-base's layer means, fit in seconds once states are cached)
  torchrun --nproc_per_node 4 -m emovox.cli train --data_dir ravdess --model crnn ...   (DistributedDataParallel)

The defaults are emovox's own (a crnn on 128-band log-mel), not any source system's: a recipe gives
those. The benchmark's settings (benchmarks/speech_benchmark.py), better on real corpora:
--use_augmentation --mixup 0.2 --lr 0.003 --lr-schedule cosine --epochs 60 --early_stopping_patience 12
(and --threads 1 on a busy machine).

--config FILE: a YAML mapping of option names to values (batch_size: 8, use_augmentation: true,
labels: [happy, sad], model_option: {{channels: 16}}); names as the flags' without dashes. The FastAPI wav2vec2 hybrid's
dataset_config.yaml keys work too: max_samples, batch_size, train_split (= 1 - val_split), and
num_epochs, learning_rate, wav2vec_model (= --backbone). Unknown keys are an error listing the valid ones.

training for real recordings (--augment SPEC): every training clip also gets K degraded copies (noise, babble
of other training speakers, rooms, telephone, codecs, level), computed once per clip and cached by clip, spec and
seed; each epoch a clip is drawn from the clean one and its copies; validation stays clean. Frame models cache the
copies' features (standardisation from the mix), probe heads (--ssl-head mean/stats) their pooled states, other
frozen ssl heads their hidden states; fine-tuned backbones degrade each step. Presets: {presets}. Forms:
KIND[:VALUE|LOW..HIGH] with KIND one of {kinds}; chains joined by '+'; a YAML/JSON file of steps
(docs/training.md). --use_augmentation (feature domain) works on top of it for frame models.
  emovox train --data_dir ravdess crema-d --model crnn --augment real-world --augment-copies 2 --output_dir runs/rw

Label order: a taxonomy or list in --labels gives it; otherwise, when the data's labels are exactly a
taxonomy's set (the Core ML mobile CNN's five: basic5), that taxonomy's order; else emovox's canonical order
(neutral, calm, happy, sad, angry, fearful, disgust, surprised, boredom), other labels alphabetically
after. The run prints the order and writes it to labels.json.

--data_dir with a labels.csv inside reads it (paths relative to the CSV); otherwise the corpus is
recognised from its file names (ravdess, crema-d, tess, emodb, savee, nemo) or class folders.
Features are cached in --cache-dir (default $EMOVOX_CACHE_DIR or ~/.cache/emovox/features).
--model ssl: a pretrained speech backbone with a small trained head: Whisper (whisper-base, whisper-tiny.en:
installed packages, offline; or a CTranslate2 / Hugging Face Whisper folder) or wav2vec2 / HuBERT / WavLM (a
Hugging Face id, downloaded when the hub is reachable, or a save_pretrained folder); frozen by default, its
hidden states are cached per clip in --cache-dir (float16); see docs/ssl.md. Under torchrun, --batch_size is the global batch.
--export writes OUTPUT_DIR/export/ (what emovox export writes, Core ML as .mlmodel) and links its
feature-input graph beside best_model.pth as the Core ML mobile CNN's emotion_classifier.onnx and EmotionClassifier.mlmodel.
--save-full-model writes model_full.pth (frame models) or, for --model lstm, the streaming MFCC-LSTM's model.pth and
model_weights.pth plus model_torchscript.pt: model.pth is a pickle (torch >= 2.6 loads it only with
torch.load(path, weights_only=False), emovox must be importable, and loading it runs code: only from a
trusted source); model_torchscript.pt takes the same forward(x, hidden) and needs neither (torch.jit.load).
best_model.pth holds tensors only and loads with weights_only=True. checkpoint.pt beside it is the run's
training state (optimiser, schedule, history) that --resume continues from; nothing else reads it. For the streaming MFCC-LSTM's backend loop, which
computes its own MFCC, train with --features framewise-librosa-mfcc13 (its exact features).
"""

#: Options that configure the pretrained backbone (--model ssl only).
SSL_OPTIONS = ("backbone", "backbone_revision", "finetune_backbone", "bundle_backbone", "ssl_layers", "ssl_head")
EXPORT_FORMATS = ("onnx", "coreml", "torchscript")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def _export_formats(text: str) -> list[str]:
    parts = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in parts if v not in EXPORT_FORMATS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown export format {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join(EXPORT_FORMATS)} (comma-separated)")
    return parts


def _fraction(value) -> float:
    v = float(value)
    if not 0 < v < 1:
        raise ValueError(f"expected a fraction between 0 and 1, got {value!r}")
    return round(1.0 - v, 10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from emovox.commands.options import Options
    from emovox.degrade.conditions import KINDS
    from emovox.degrade.spec import PRESETS
    from emovox.training.recipes import recipes_help

    opts = Options()
    p.set_defaults(_train_options=opts)
    p.epilog = EPILOG.format(recipes=recipes_help(), presets=", ".join(PRESETS), kinds=", ".join(KINDS))
    _layer_arguments(opts, p)
    _data_arguments(opts, p)
    _model_arguments(opts, p)
    _backbone_arguments(opts, p)
    _training_arguments(opts, p)
    _distillation_arguments(opts, p)
    _split_arguments(opts, p)
    _output_arguments(opts, p)
    # the FastAPI wav2vec2 hybrid's dataset_config.yaml and train.py constants, accepted in --config files
    opts.alias("train_split", "val_split", _fraction)
    opts.alias("num_epochs", "epochs")
    opts.alias("learning_rate", "lr")
    opts.alias("wav2vec_model", "backbone")


#: --distill-weight when a teacher is given without it
DEFAULT_DISTILL_WEIGHT = 0.7


def _tc(name: str):
    """TrainConfig's default for a field: the one owner of every training default."""
    from dataclasses import fields

    from emovox.training.config import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig)}[name]


def _layer_arguments(opts, p) -> None:
    from emovox.training.recipes import RECIPES

    g = p.add_argument_group("recipe and config file")
    opts.add(g, "--recipe", choices=list(RECIPES), shown="none: emovox's own defaults",
             help="the settings of one source system (listed below); flags given explicitly still win")
    opts.add(g, "--config", metavar="FILE", help="a YAML file of option values (names as the flags'); "
             "flags given on the command line win over it")


def _data_arguments(opts, p) -> None:
    g = p.add_argument_group("data")
    opts.add(g, "--data_dir", "--data-dir", dest="data_dir", nargs="+", action="extend", metavar="DIR",
             shown="none: required, here or as data_dir in --config",
             help="corpus folder(s); several are merged (repeat the flag or list them)")
    opts.add(g, "--csv_path", "--csv-path", dest="csv_path", shown="DATA_DIR/labels.csv when present",
             help="labels CSV (path,label[,speaker])")
    opts.add(g, "--corpus", nargs="+", action="extend", metavar="NAME", shown="detected",
             help="corpus layout per data dir (ravdess, crema-d, tess, emodb, savee, nemo, csv, folders)")
    opts.add(g, "--labels", default=_tc("labels"), shown="the data's labels, in the order described below",
             help="target labels: a taxonomy (ravdess8, ekman7, crema6, basic5, app6, core4), a list 'a,b,c' (in that "
                  "order), merges 'disgust=angry,calm=neutral', or both 'happy,sad,angry,neutral,disgust=angry'; "
                  "clips it cannot express are dropped and counted (app6 takes disgust as angry)")
    opts.add(g, "--max-samples", "--max_samples", dest="max_samples", type=int, default=_tc("max_samples"),
             shown="every clip", help="use at most N clips, chosen deterministically (--seed) and spread evenly "
             "over labels and, within each label, over speakers (the FastAPI wav2vec2 hybrid's max_samples)")


def _model_arguments(opts, p) -> None:
    from emovox.features import PRESET_ALIASES, PRESETS
    from emovox.training.config import DEFAULT_FEATURES

    g = p.add_argument_group("model and features")
    opts.add(g, "--model", default=_tc("model"),
             help="model family: cnn (the Core ML mobile CNN), cnn2d (the Keras backend CNN), lstm (the streaming MFCC-LSTM), crnn, fast (a small 1-D CNN), "
                  "ssl (the FastAPI wav2vec2 hybrid)")
    opts.add(g, "--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
             help="a model setting (repeatable), VALUE as JSON when it parses (dropout=0, channels=[32,32]), "
                  "else a string; added to a recipe's or config file's, KEY by KEY")
    opts.add(g, "--features", choices=[*PRESETS, *PRESET_ALIASES], metavar="PRESET",
             shown="per model: " + ", ".join(f"{m} {f}" for m, f in DEFAULT_FEATURES.items()),
             help=f"feature preset: {', '.join(PRESETS)}; logmel64-hop512-100f and -32f are seeds 000's and 001's "
                  f"inputs, mfcc13-streaming the streaming LSTM's MFCC, framewise-librosa-mfcc13 the streaming MFCC-LSTM's backend "
                  f"pipeline exactly; older names, still accepted: "
                  + ", ".join(f"{a} (= {n})" for a, n in PRESET_ALIASES.items()))
    opts.add(g, "--n_mels", "--n-mels", dest="n_mels", type=int, shown="the preset's",
             help="mel bands (overrides the preset)")
    opts.add(g, "--time_steps", "--time-steps", dest="time_steps", type=int, shown="the preset's (mostly: any length)",
             help="fixed number of input frames (crop/pad, the Core ML mobile CNN's fixed input)")
    opts.add(g, "--sample_rate", "--sample-rate", dest="sample_rate", type=int, shown="the preset's, 16000",
             help="sample rate in Hz (overrides the preset)")


def _backbone_arguments(opts, p) -> None:
    g = p.add_argument_group("pretrained backbone (--model ssl, the FastAPI wav2vec2 hybrid)")
    opts.add(g, "--backbone", metavar="NAME_OR_DIR", shown="none: required with --model ssl",
             help="whisper-base or whisper-tiny.en (installed packages: offline), a CTranslate2 Whisper folder, a "
                  "Hugging Face model id (openai/whisper-base, facebook/wav2vec2-base, facebook/hubert-base-ls960, "
                  "microsoft/wavlm-base-plus) or a local save_pretrained folder")
    opts.add(g, "--backbone-revision", dest="backbone_revision", shown="the hub's main",
             help="hub branch, tag or commit")
    opts.add(g, "--finetune-backbone", dest="finetune_backbone", type=int, default=0, metavar="N",
             help="train the top N transformer layers too (0: frozen backbone, hidden states cached once per clip)")
    opts.add(g, "--bundle-backbone", dest="bundle_backbone", action="store_true", default=False,
             help="copy the backbone into OUTPUT_DIR/backbone so the model folder is self-contained (otherwise "
                  "it references the backbone by id or path)")
    opts.add(g, "--ssl-layers", dest="ssl_layers", metavar="LAYERS", shown="all",
             help="hidden layers the head weighs: a range '6-12' or a list '0,4,8' (0: the transformer input); "
                  "fewer layers, smaller cache")
    opts.add(g, "--ssl-head", dest="ssl_head", choices=["cnn", "attention", "mean", "stats"], default="cnn",
             help="1D CNN with mean/std pooling (--model-option channels=N hidden=N size it), attentive statistics "
                  "pooling, mean: standardised per-layer time means and one linear layer (a linear probe), or "
                  "stats: means and log standard deviations (a probe)")
    opts.add(g, "--probe-c", dest="probe_c", type=_floats, metavar="C,C,...", default=_tc("probe_c"),
             shown="five from 0.001 to 0.1, listed in the training log",
             help="the 'mean' and 'stats' heads are fit as a logistic-regression probe: inverse L2 strengths to "
                  "try, the best on validation UAR kept")


def _training_arguments(opts, p) -> None:
    from emovox.training.config import LABEL_SCOPES

    g = p.add_argument_group("training")
    opts.add(g, "--epochs", type=int, default=_tc("epochs"), help="most epochs to train")
    opts.add(g, "--batch_size", "--batch-size", dest="batch_size", type=int, default=_tc("batch_size"),
             help="clips per optimiser step")
    opts.add(g, "--lr", type=float, default=_tc("lr"), help="peak learning rate (AdamW)")
    opts.add(g, "--weight-decay", dest="weight_decay", type=float, default=_tc("weight_decay"), help="AdamW weight decay")
    opts.add(g, "--lr-schedule", dest="lr_schedule", choices=["noam", "cosine"], default=_tc("lr_schedule"),
             help="warmup then 1/sqrt(step) (noam) or cosine to --epochs")
    opts.add(g, "--use_augmentation", "--use-augmentation", dest="use_augmentation", action="store_true",
             default=_tc("augment"), help="noise, gain, time shift, speed perturbation and SpecAugment on training data")
    opts.add(g, "--augment", dest="augment", metavar="SPEC", default=_tc("augment_spec"), shown="off",
             help="multi-condition training on degraded copies of the training clips (waveform domain, every model "
                  "family; see 'training for real recordings' below): a preset (real-world), a chain such as "
                  "pink:0..20+room:0.3..1.0, or a YAML/JSON file of steps")
    opts.add(g, "--augment-copies", "--augment_copies", dest="augment_copies", type=int, metavar="K",
             default=_tc("augment_copies"), shown="the spec's copies, else 1",
             help="degraded copies per training clip (computed once, cached); each epoch a clip is drawn from the "
                  "clean one and its K copies")
    opts.add(g, "--noise-dir", "--noise_dir", dest="noise_dir", metavar="FOLDER", default=_tc("noise_dir"),
             shown="none", help="your own noise recordings, for the spec's 'noise' steps (noise:0..20)")
    opts.add(g, "--mixup", type=float, default=_tc("mixup_alpha"), metavar="ALPHA",
             help="mixup Beta(ALPHA, ALPHA) (frame models); 0: off")
    opts.add(g, "--class-balance", dest="class_balance", choices=["loss", "sampler", "none"],
             default=_tc("class_balance"), help="counter class imbalance by a weighted loss or a balanced sampler")
    opts.add(g, "--label-scope", dest="label_scope", choices=LABEL_SCOPES, default=_tc("label_scope"),
             help="corpus: each clip's loss covers only the labels its corpus has in the training data, so merged "
                  "corpora that lack a class (CREMA-D: surprised) do not teach 'never that class'; all: every label")
    opts.add(g, "--crop-seconds", dest="crop_s", type=float, default=_tc("crop_s"),
             help="training crop length for frame models (evaluation uses whole clips)")
    opts.add(g, "--streaming-loss", dest="streaming_loss", choices=["frames", "last"], default=_tc("streaming_loss"),
             help="streaming models (lstm): train the label at every frame after the first 0.5 s, or only at "
                  "the last frame (the streaming MFCC-LSTM)")
    opts.add(g, "--early_stopping_patience", "--early-stopping-patience", dest="patience", type=int,
             default=_tc("early_stopping_patience"),
             help="epochs without validation UAR improvement before stopping (0: off)")
    opts.add(g, "--seed", type=int, default=_tc("seed"), help="random seed (splits, order, augmentation, subsets)")
    opts.add(g, "--resume", action="store_true", default=False, help="continue from OUTPUT_DIR/checkpoint.pt")


def _distillation_arguments(opts, p) -> None:
    g = p.add_argument_group("knowledge distillation (a student trained on a teacher's soft labels too)")
    opts.add(g, "--teacher", default=_tc("teacher"), metavar="MODEL",
             help="teacher model (shipped name or folder, e.g. default) whose soft labels the student learns; with "
                  "--teacher-labels, clips missing from that file are computed and appended to it")
    opts.add(g, "--teacher-labels", dest="teacher_labels", default=_tc("teacher_labels"), metavar="FILE",
             help="the teacher's logits per clip (JSON Lines, keyed by the clip's content; written by --teacher or "
                  "python -m benchmarks.distill labels)")
    opts.add(g, "--distill-weight", dest="distill_weight", type=float, default=None, metavar="W",
             shown=f"{DEFAULT_DISTILL_WEIGHT} with a teacher, else 0",
             help="loss = (1 - W) * cross-entropy on the true labels + W * T^2 * KL(teacher || student) at "
                  "temperature T; 1: the teacher alone, 0: the true labels alone")
    opts.add(g, "--distill-temperature", dest="distill_temperature", type=float, default=_tc("distill_temperature"),
             metavar="T", help="softmax temperature of both distributions in the distillation term")


def _split_arguments(opts, p) -> None:
    g = p.add_argument_group("splits")
    opts.add(g, "--split", choices=["speaker", "stratified"], default=_tc("split"),
             help="speaker-independent or stratified random splits")
    opts.add(g, "--val_split", "--val-split", dest="val_split", type=float, default=_tc("val_split"),
             help="share of the training data held out for validation (whole speakers when known)")
    opts.add(g, "--test-speakers", "--test_speakers", dest="test_speakers", shown="none: no test split",
             help="comma-separated speakers held out as the test set (e.g. 1,2 or ravdess_01)")
    opts.add(g, "--folds", type=int, default=_tc("folds"), shown="none: one model",
             help="K-fold cross-validation by speaker: one model per fold")
    opts.add(g, "--fold", type=int, default=_tc("fold"), shown="every fold", help="with --folds: train only this fold (1-based)")


def _output_arguments(opts, p) -> None:
    g = p.add_argument_group("output and resources")
    opts.add(g, "--output_dir", "--output-dir", dest="output_dir", default="outputs", help="the model folder to write")
    opts.add(g, "--save-full-model", "--save_full_model", dest="save_full_model", action="store_true", default=False,
             help="also write model_full.pth, or for lstm the streaming MFCC-LSTM's model.pth + model_weights.pth and a pickle-free "
                  "model_torchscript.pt (pickles: unsafe to load from untrusted sources)")
    opts.add(g, "--export", nargs="?", const="onnx,coreml", type=_export_formats, metavar="FORMATS",
             shown="off; --export alone: onnx,coreml",
             help="after training, export to these formats (onnx, coreml, torchscript) into OUTPUT_DIR/export, "
                  "the feature-input graph also as OUTPUT_DIR/emotion_classifier.onnx and EmotionClassifier.mlmodel")
    opts.add(g, "--export-input", dest="export_input", choices=["waveform", "features", "both"], default="both",
             help="graph inputs to export: 16 kHz samples, raw features, or both")
    opts.add(g, "--cache-dir", dest="cache_dir", shown="$EMOVOX_CACHE_DIR or ~/.cache/emovox/features",
             help="feature cache folder")
    opts.add(g, "--no-cache", dest="no_cache", action="store_true", default=False,
             help="do not read or write the feature cache")
    opts.add(g, "--num-workers", "--num_workers", dest="num_workers", type=int, default=_tc("num_workers"),
             shown="min(4, CPUs)", help="threads decoding and featurising audio on the first pass")
    opts.add(g, "--device", default=_tc("device"), help="auto (CUDA when available), cpu, cuda or cuda:N")
    opts.add(g, "--threads", type=int, shown="torch's choice",
             help="torch intra-op threads (1 is often fastest on a shared or busy machine)")
    opts.add(g, "--progress", dest="progress", action=argparse.BooleanOptionalAction,
             shown="when stderr is a terminal", help="progress bars")


def settings(args: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """Every option's value from the layers (defaults < recipe < config file < explicit flags), and
    where the non-default ones came from (``{"recipe", "recipe_options", "config_options", "explicit"}``)."""
    from emovox.commands.options import OptionError
    from emovox.training.recipes import recipe

    opts = args._train_options
    explicit = opts.explicit(args)
    config = opts.read_config(explicit["config"]) if explicit.get("config") else {}
    if "config" in config:
        raise OptionError(f"config file {explicit['config']}: config: a config file cannot name another one")
    name = explicit.get("recipe", config.get("recipe"))
    layers, from_recipe = [], {}
    if name:
        r = recipe(name)
        model = explicit.get("model", config.get("model", r.model))
        from_recipe = {d: opts.convert(d, v, f"recipe {name}: {d}") for d, v in r.layer(model).items()}
        layers.append(from_recipe)
    resolved = opts.resolve([*layers, config, explicit])
    # model options add up KEY by KEY (a later layer's KEY wins), so '--recipe hybrid --model-option
    # dropout=0.1' keeps the recipe's head size
    merged = {o.partition("=")[0].strip(): o for layer in (*layers, config, explicit)
              for o in layer.get("model_options") or []}
    resolved.model_options = list(merged.values()) or None
    if not resolved.data_dir:
        raise OptionError("no data: give --data_dir DIR (or data_dir in the --config file)")
    return resolved, {"recipe": name, "recipe_options": from_recipe, "config_options": config, "explicit": explicit}


def load_rows(data_dirs, corpora=None, csv_path=None):
    """Manifest rows of every data dir (merged), following the Core ML mobile CNN's --csv_path convention."""
    from pathlib import Path

    from emovox.data.corpora import CorpusError, scan

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


def model_kwargs(args, defaults: dict) -> dict:
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
    ssl_given = ["--" + d.replace("_", "-") for d in SSL_OPTIONS if getattr(args, d) != defaults[d]]
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
    from emovox.training import distributed

    distributed.init_from_env()  # no-op unless launched by torchrun with several processes
    try:
        return _run(args, rank0=distributed.is_rank0())
    finally:
        distributed.destroy()


def _announce(a, sources: dict, say) -> None:
    """Say which settings the recipe and the config file gave, and which of the recipe's the config file
    or flags changed (``a``: the resolved options)."""
    from emovox.training.recipes import recipe

    def listed(layer):
        return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in layer.items())

    if sources["recipe"]:
        r = recipe(sources["recipe"])
        changed = {k: getattr(a, k) for k, v in sources["recipe_options"].items() if getattr(a, k) != v}
        say(f"recipe {r.name} ({r.source}): {listed(sources['recipe_options'])}"
            + (f"; changed by the config file or flags: {listed(changed)}" if changed else ""))
    if sources["config_options"]:
        say(f"config file {sources['explicit']['config']}: {listed(sources['config_options'])}")
    given = set(sources["explicit"]) | set(sources["config_options"])
    if not sources["recipe"] and {"n_mels", "time_steps"} & given and not {"model", "export"} & given:
        mobile = recipe("mobile")  # seed 000's flags without its recipe: a crnn, and no mobile files
        say(f"note: this trains emovox's {a.model} and writes no ONNX or Core ML file; --recipe mobile adds seed "
            f"000's model: {mobile.summary}")


def _feature_config(a):
    from emovox.features import preset
    from emovox.training.config import DEFAULT_FEATURES

    feats = preset(a.features or DEFAULT_FEATURES.get(a.model, "logmel64"))
    changes = {}
    if a.n_mels is not None:
        changes["n_mels"] = a.n_mels
    if a.time_steps is not None:
        changes["num_frames"] = a.time_steps
    if a.sample_rate is not None:
        changes["sample_rate_hz"] = a.sample_rate
    return feats.replace(**changes) if changes else feats


def train_config(a, defaults: dict):
    """The :class:`~emovox.training.config.TrainConfig` of resolved options ``a``."""
    from emovox.training.config import TrainConfig

    return TrainConfig(
        model=a.model, model_kwargs=model_kwargs(a, defaults), features=_feature_config(a).to_dict(), labels=a.labels,
        max_samples=a.max_samples, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        lr_schedule=a.lr_schedule, val_split=a.val_split, split=a.split,
        test_speakers=[s for s in a.test_speakers.split(",") if s.strip()] if a.test_speakers else None,
        folds=a.folds, fold=a.fold, seed=a.seed, augment=a.use_augmentation, mixup_alpha=a.mixup,
        class_balance=a.class_balance, label_scope=a.label_scope, crop_s=a.crop_s,
        streaming_loss=a.streaming_loss, early_stopping_patience=a.patience,
        num_workers=a.num_workers, device=a.device, probe_c=a.probe_c,
        augment_spec=a.augment, augment_copies=a.augment_copies, noise_dir=a.noise_dir,
        teacher=a.teacher, teacher_labels=a.teacher_labels, distill_temperature=a.distill_temperature,
        distill_weight=(a.distill_weight if a.distill_weight is not None
                        else DEFAULT_DISTILL_WEIGHT if (a.teacher or a.teacher_labels) else 0.0),
    )


def _run(args, *, rank0: bool = True) -> int:
    from emovox.data.cache import default_cache_dir
    from emovox.training.run import run_training

    a, sources = settings(args)
    say = print if rank0 else (lambda *_: None)
    _announce(a, sources, say)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.export:
        from emovox.export import check_dependencies

        check_dependencies(a.export)  # before hours of training, not after
    rows = load_rows(a.data_dir, a.corpus, a.csv_path)
    cfg = train_config(a, args._train_options.defaults())
    cache = None if a.no_cache else (a.cache_dir or default_cache_dir())
    meta = {"data_dirs": [str(d) for d in a.data_dir], "csv_path": a.csv_path, "recipe": sources["recipe"],
            "config_file": a.config}
    results = run_training(rows, cfg, a.output_dir, cache=cache, resume=a.resume,
                           save_full_model=a.save_full_model, meta=meta,
                           progress=a.progress if rank0 else False, echo=print if rank0 else None)
    if results and a.export and rank0:
        for r in results:
            _export(r.out_dir, a.export, a.export_input, getattr(args, "verbose", 0), say)
    if results and a.save_full_model and a.model == "lstm":
        for line in full_model_lines(results[-1].out_dir):
            say(line)
    return 0 if results else 1


def full_model_lines(out_dir) -> list[str]:
    """The last lines of a run that wrote the streaming MFCC-LSTM's files: how each one loads."""
    from emovox.modelio import STREAMING_FULL_MODEL_FILE as FULL
    from emovox.modelio import STREAMING_WEIGHTS_FILE as WEIGHTS

    return [f"{out_dir}/{FULL} is a pickled model: on torch >= 2.6 torch.load('{FULL}') fails (weights_only=True, "
            "the default, cannot load a pickled model, and no setting makes it); the one-line fix: "
            f"model = torch.load('{FULL}', weights_only=False) (emovox importable; a pickle runs code: trusted "
            "files only)",
            f"{out_dir}/{WEIGHTS} is the plain state dict of the plan's EmotionLSTM (standardisation and temperature "
            f"folded in): model.load_state_dict(torch.load('{WEIGHTS}', weights_only=True)) loads with no pickle; "
            f"`emovox export --model {out_dir} --runtime` gives it ONNX Runtime graphs (emovox stream / serve "
            "without PyTorch)"]


def _export(out_dir, formats, inputs, verbose: int, say) -> None:
    from emovox.commands.export import quiet_converters
    from emovox.export import TRAIN_EXPORT_DIR, ExportError, export_trained_model

    try:
        with quiet_converters(verbose):
            report, top = export_trained_model(out_dir, formats=formats, inputs=inputs)
    except ExportError as e:
        raise ExportError(f"the model is trained and saved in {out_dir}, but --export failed: {e}") from e
    worst = [c["max_abs_diff"] for per in report.checks.values() for c in per.values() if "max_abs_diff" in c]
    checked = f"; largest |logit - PyTorch| {max(worst):.1e}" if worst else ""
    say(f"exported {', '.join(formats)} ({inputs} input) to {out_dir}/{TRAIN_EXPORT_DIR} in {report.seconds:.1f} s"
        f"{checked}" + (f"; the Core ML mobile CNN's files: {', '.join(p.name for p in top)}" if top else ""))
