"""The ``emovox`` command: one subcommand per module in :mod:`emovox.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules import their heavy dependencies inside ``run`` so ``emovox --help`` stays fast.
Logging is configured here, never in library code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from emovox import __version__

#: (subcommand, module under emovox.commands). Order is the order shown in --help.
COMMANDS: list[tuple[str, str]] = [
    ("manifest", "manifest"),
    ("datasets", "datasets"),
    ("synth", "synth"),
    ("classify", "classify"),
    ("stream", "stream"),
    ("serve", "serve"),
    ("text", "text"),
    ("text-train", "text_train"),
    ("text-evaluate", "text_evaluate"),
    ("text-export", "text_export"),
    ("text-ensemble", "text_ensemble"),
    ("train", "train"),
    ("evaluate", "evaluate"),
    ("adapt", "adapt"),
    ("plot-confusion", "plot_confusion"),
    ("export", "export"),
]


#: Optional dependencies → the extra that installs them (``pip install 'emovox[EXTRA]'``).
EXTRAS = {"torch": "train", "sklearn": "train", "matplotlib": "train", "safetensors": "the base install", "yaml": "train",
          "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "prometheus_client": "serve",
          "transformers": "text", "sentence_transformers": "text", "coremltools": "export", "ray": "ray",
          "onnxruntime": "the base install", "onnx": "the base install", "tokenizers": "the base install"}


def missing_dependency_message(command: str | None, e: ModuleNotFoundError) -> str:
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    hint = f"pip install 'emovox[{extra}]'" if extra and extra != "the base install" else "pip install emovox"
    return f"emovox {command or ''}: {top or e} is not installed, and this command needs it: {hint}"


#: Commands that answer one clip or one stream at a time: torch gets one intra-op thread, as ``emovox serve`` gives
#: each inference (OpenMP teams contending for a busy machine's cores took seconds per clip). The others get the
#: cores this process may use (its affinity: a container's share, not the host's core count).
ONE_THREAD_COMMANDS = ("classify", "stream", "text")


def size_torch_threads(command: str, args: argparse.Namespace) -> int | None:
    """Size torch's intra-op threads for ``command`` (``serve`` sizes its own; ``--threads`` and the user's
    ``OMP_NUM_THREADS`` win). Torch is not imported for it: before its import, ``OMP_NUM_THREADS`` is what torch
    reads. Returns the threads set, or None."""
    if command == "serve" or getattr(args, "threads", None) or os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    n = 1 if command in ONE_THREAD_COMMANDS else max(1, cores)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default; an option whose default is ``None`` (not given: its help says what
    applies then, e.g. ``emovox serve``'s settings from the environment) gets no ``(default: None)``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's options are built ("": none; the others keep their
    one-line help): building ``train``'s reads ``TrainConfig``'s defaults, which imports torch (seconds)."""
    parser = argparse.ArgumentParser(
        prog="emovox",
        description="Emotion recognition in speech (and text): classify, train, evaluate, stream, serve, export.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"emovox {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = importlib.import_module(f"emovox.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=_Formatter)
        if only is None or name == only:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    names = {name for name, _ in COMMANDS}
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(only=command if command in names else "")  # "": no subcommand's options
    except ModuleNotFoundError as e:  # e.g. `emovox train --help` on an inference-only install
        print(missing_dependency_message(command, e), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    size_torch_threads(args.command, args)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as e:  # an optional dependency this command needs (training needs torch, ...)
        if (e.name or "").split(".")[0] not in EXTRAS:
            raise
        print(missing_dependency_message(args.command, e), file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # OSError: unreadable inputs, a full disk, no permission
        # Boundary errors (AudioError, LabelError, CorpusError, ... are ValueErrors): one line, non-zero exit.
        print(f"emovox {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
