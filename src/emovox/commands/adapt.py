"""``emovox adapt``: fit a probe-head model's standardisation to unlabelled recordings of a new domain."""

from __future__ import annotations

HELP = "adapt a model to recordings of a new domain (unlabelled): a new model folder"

EPILOG = """\
The default model reads Whisper-base states through a linear probe whose inputs are standardised with
its training clips' statistics. Recordings of another corpus, language or microphone shift them;
`emovox adapt` re-estimates them on your own unlabelled clips (at least 30, the more the better) and
writes a new model folder: classify, serve and evaluate take it like any other. Labels, the linear
layer and calibration are unchanged. Measured across corpora in BENCHMARKS.md.

examples:
  emovox adapt --model default --output-dir models/callcentre recordings/
  emovox classify --model models/callcentre call_0001.wav
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files or folders (searched recursively)")
    p.add_argument("--model", default="default", help="a shipped model's name or a model folder (default: default)")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                   help="the adapted model's folder (new or empty)")
    p.add_argument("--cache-dir", dest="cache_dir", default=None, help="feature cache folder")
    p.add_argument("--no-cache", dest="no_cache", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def run(args) -> int:
    from pathlib import Path

    from emovox.audio import find_audio_files
    from emovox.data.cache import default_cache_dir
    from emovox.training.adaptation import adapt_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    clips: list[Path] = []
    for item in args.inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {item}")
        clips += find_audio_files(path) if path.is_dir() else [path]
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    record = adapt_model(args.model, clips, args.output_dir, cache=cache)
    print(f"adapted {args.model} on {record['clips']} clips ({record['unreadable']} unreadable): {args.output_dir}")
    return 0
