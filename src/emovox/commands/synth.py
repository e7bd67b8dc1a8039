"""``emovox synth --out DIR``: write a small synthetic (not real speech) labelled corpus."""

from __future__ import annotations

HELP = "write a small synthetic, learnable emotion corpus (WAV + labels.csv) for tests and demos"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--labels", nargs="+", default=["neutral", "happy", "sad", "angry"],
                        help="emotion labels (space- or comma-separated)")
    parser.add_argument("--speakers", type=int, default=4, help="number of synthetic speakers")
    parser.add_argument("--clips", type=int, default=5, help="clips per label per speaker")
    parser.add_argument("--duration-s", type=float, default=1.0, help="clip duration in seconds")
    parser.add_argument("--sample-rate-hz", type=int, default=16000, help="sample rate of the WAV files")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args) -> int:
    from emovox.data.synth import make_synthetic_corpus

    labels = [lab.strip() for item in args.labels for lab in item.split(",") if lab.strip()]
    out = make_synthetic_corpus(
        args.out, labels=labels, n_speakers=args.speakers, clips_per_label_per_speaker=args.clips,
        duration_s=args.duration_s, sample_rate_hz=args.sample_rate_hz, seed=args.seed,
    )
    n = len(labels) * args.speakers * args.clips
    print(f"wrote {n} synthetic clips ({len(labels)} labels x {args.speakers} speakers x {args.clips}) "
          f"to {out}; labels: {out / 'labels.csv'}")
    return 0
