"""The ``tinyhd`` command line: one dispatcher, each subcommand implemented beside the code it drives.

Every subcommand module exposes ``cli_main(argv: list[str]) -> int`` with its own ``argparse`` parser. The
dispatcher turns the errors users can cause (bad files, bad arguments) into one clear line and a non-zero
exit instead of a traceback; ``TINYHD_DEBUG=1`` shows the traceback for bug reports.
"""
from __future__ import annotations

import importlib
import os
import sys

from tinyhd.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("tinyhd.synth", "write a synthetic DHF1K-layout (or Kinetics-layout) dataset"),
    "verify-data": ("tinyhd.manifest", "check a dataset copy against its manifest"),
    "predict": ("tinyhd.inference", "saliency maps (PNG, optional overlay MP4) for a video"),
    "evaluate": ("tinyhd.evaluate", "run a checkpoint over a split and print the seven metrics"),
    "train": ("tinyhd.training", "train or distil a model from a YAML config (resumes)"),
    "cache-teacher": ("tinyhd.teacher_cache", "run the HD2S teacher once over a dataset and store its maps"),
    "weights": ("tinyhd.weights", "list, download and verify the authors' released checkpoints"),
    "complexity": ("tinyhd.complexity", "parameters and GMACs of the TinyHD variants beside the paper's"),
}


def parse_size(text: str) -> tuple[int, int]:
    """A ``--size`` value: ``"192x256"`` or ``"192×256"`` (either sign, any case) -> (192, 256). Commands check
    their own constraints on the numbers."""
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UserError(f"--size must look like HxW or H×W (e.g. 192x256), not {text!r}") from None
    return h, w


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tinyhd COMMAND [ARGS...]   (tinyhd COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from tinyhd import __version__

        print(f"tinyhd {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tinyhd: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.cli_main(rest) or 0)
    except KeyboardInterrupt:
        print("tinyhd: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError) as exc:
        if os.environ.get("TINYHD_DEBUG"):
            raise
        print(f"tinyhd {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
