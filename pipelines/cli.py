"""The `arscale` command line.

Every error a user can cause prints one line (`error: ...`) and exits 2 for bad arguments or input, 1 for a
failure while running; `--debug` shows the traceback instead.

Each command's parsers and handlers live in the module that COMMANDS names, which is imported only when that
command runs: between them those modules import torch, Ray, MLflow, scipy and matplotlib, about 3 s that
`arscale --help`, `arscale jobs list` or `arscale fit` need not pay.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from pipelines.errors import ManyProblems, RunFailure, UserError

# command: (the module whose add_parsers(sub, common) adds it, with its handlers; its line in `arscale --help`)
COMMANDS = {
    "study": ("pipelines.study_commands", "run and inspect studies"),
    "presets": ("pipelines.study_commands", "list the built-in study configs"),
    "config": ("pipelines.study_commands", "tools for writing study configs"),
    "report": ("pipelines.study_commands", "show where a study's report is and its main numbers"),
    "fit": ("pipelines.fit_commands", "fit a scaling law to a table of runs"),
    "advise": ("pipelines.fit_commands", "which run to train next to sharpen a prediction"),
    "train": ("pipelines.study_commands", "run one training run in this process, without Ray"),
    "tokenizer": ("pipelines.tokenization.commands", "train tokenizers"),
    "tokenize": ("pipelines.tokenization.commands", "tokenize a corpus into Parquet token shards (on Ray)"),
    "detokenize": ("pipelines.tokenization.commands", "decode token shards back to documents"),
    "sample": ("pipelines.sample_command", "sample from a trained model of a study"),
    "cluster": ("cluster.commands", "a local Ray cluster of several nodes on 127.0.0.1"),
    "submit": ("cluster.submit", "run a study on a Ray cluster as a job"),
    "jobs": ("cluster.commands", "list, inspect, follow and stop jobs"),
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines about creating tables are noise
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        build_parser([]).print_help()  # the list of commands
        return 2
    try:
        return args.handler(args) or 0
    except UserError as e:
        return _fail(args, e, 2)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        return _fail(args, e, 2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except Exception as e:  # RunFailure, and anything unexpected
        return _fail(args, e, 1)


def _fail(args, error: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        message = str(error).strip() or type(error).__name__
        expected = isinstance(error, (UserError, RunFailure, OSError, ValueError))
        if not expected:
            message = f"{type(error).__name__}: {message}"
        hint = "" if expected else "  (--debug shows the traceback)"
        # One line, except for several problems of one input (a config's), listed one per line under it
        lines = message.splitlines() if isinstance(error, ManyProblems) else message.splitlines()[:1]
        print(f"error: {lines[0]}{hint}", *lines[1:], sep="\n", file=sys.stderr)
    return code


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: every command listed, and the one `argv` names (its first word) complete."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not reset a --debug given before the subcommand.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser = argparse.ArgumentParser(prog="arscale", parents=[common],
                                     description="Scaling-law studies of autoregressive models on Ray.")
    parser.add_argument("--version", action="version", version=f"arscale {package_version()}")
    sub = parser.add_subparsers(metavar="COMMAND")
    chosen = next((w for w in argv if not w.startswith("-") or w in ("-h", "--help")), None)
    if chosen in COMMANDS:  # (after -h, the list of commands is all that is shown)
        importlib.import_module(COMMANDS[chosen][0]).add_parsers(sub, common)
    for name, (_, text) in COMMANDS.items():
        if name not in sub.choices:  # one line in the list, and a parser that is never run
            sub.add_parser(name, parents=[common], help=text)
    return parser


def package_version() -> str:
    """The installed distribution's version (a checkout without an install: pyproject's, unknown here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arscale")
    except PackageNotFoundError:
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
