"""The `arscale study`, `presets`, `config`, `report` and `train` commands: their parsers and handlers
(pipelines.cli imports this module only when one of them runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from armodels.train import TrainRun, train_single_process
from pipelines.config import PRESETS_DIR, json_schema, load_config, presets
from pipelines.errors import UserError
from pipelines.progress import TrainingProgress
from pipelines.status import report_summary, study_status
from pipelines.study import run_study


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    study = sub.add_parser("study", parents=[common]).add_subparsers(metavar="ACTION")
    p = study.add_parser("run", parents=[common], help="run a study (skips finished steps)",
                         description="Run a study: tokenizer, shards, a grid of models, evaluation, fits, report.")
    p.add_argument("config", nargs="?", help="study YAML file or preset name (default: text-default)")
    p.add_argument("--out", help="study folder, or an object-store URI such as s3://bucket/studies/NAME "
                                 "(default: studies/<study name>)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, what would run, sizes and FLOPs, "
                                                          "and a rough wall time; checks the inputs exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a setting of the config (repeatable): a dotted key, list entries by their index "
                        "from 0, the value read as YAML; e.g. --set training.lr=1e-3 --set models.seq_len=64 --set "
                        "models.grids.0.sizes.1.n_embd=48 --set 'training.lr_sweep=[0.002, 0.005]'. Recorded in "
                        "the study's study.json")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<study>/mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.set_defaults(handler=cmd_study_run)
    p = study.add_parser("status", parents=[common], help="show the state of every step of a study")
    p.add_argument("dir", help="study folder or object-store URI")
    p.set_defaults(handler=cmd_study_status)

    p = sub.add_parser("presets", parents=[common],
                       description="The study configs that ship with arscale: give a name to `arscale study run`.")
    p.set_defaults(handler=cmd_presets)

    config = sub.add_parser("config", parents=[common]).add_subparsers(metavar="ACTION")
    p = config.add_parser("schema", parents=[common], help="write the JSON Schema of study configs (for editors)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Write the JSON Schema of a study config: editors then complete keys, show "
                                      "their types and defaults, and\nunderline unknown keys as you type. With VS "
                                      "Code's YAML extension (or any editor using the YAML language\nserver), write "
                                      "it once and name it in the first line of your config:\n\n"
                                      "    arscale config schema --out arscale-study.schema.json\n\n"
                                      "    # yaml-language-server: $schema=arscale-study.schema.json\n"
                                      "    name: my-study\n    ...\n\n"
                                      "(the path is relative to the config file). The schema checks each key and "
                                      "type and each family's size\nfields; `arscale study run --dry-run` checks "
                                      "everything.")
    p.add_argument("--out", type=Path, help="write the schema to this file (default: print it)")
    p.set_defaults(handler=cmd_config_schema)

    p = sub.add_parser("report", parents=[common])
    p.add_argument("dir", type=Path)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("train", parents=[common],
                       description="Train one model from a run.json (each study training step saves one) in a "
                                   "single process: for debugging and GPU checks.")
    p.add_argument("--config", type=Path, required=True, help="run.json of a training step")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=cmd_train)


def cmd_study_run(args) -> int:
    cfg, path = load_config(args.config, args.overrides)
    out = args.out or Path("studies") / cfg.name
    run_study(cfg, path, out, dry_run=args.dry_run, tracking_uri=args.tracking_uri, address=args.address,
              overrides=args.overrides)
    return 0


def cmd_study_status(args) -> int:
    print(study_status(args.dir))
    return 0


def cmd_config_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.out:
        print(text, end="")
        return 0
    try:
        args.out.write_text(text)
    except OSError as e:
        raise UserError(f"cannot write the schema to {args.out} ({e.strerror}); choose another --out") from None
    print(f"wrote {args.out}; put `# yaml-language-server: $schema={args.out.resolve()}` in a config's first line")
    return 0


def cmd_presets(args) -> int:
    found = presets()
    width = max(map(len, found), default=0)
    for name, what in found.items():
        print(f"{name:<{width}}  {what}")
    print(f"\n(in {PRESETS_DIR.resolve()}; run one with `arscale study run NAME`, or copy it and edit)")
    return 0


def cmd_report(args) -> int:
    markdown, *headline = report_summary(args.dir).splitlines()  # report.md's path, then its headline
    page = Path(markdown).with_name("report.html")
    print(markdown)
    print(page if page.is_file() else f"no report.html (the report predates it): make one with "
          f"`python -m pipelines.report_html {page.parent}`")
    for line in headline:
        print(line)
    return 0


def cmd_train(args) -> int:
    try:
        run = TrainRun.load(args.config)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    stop = threading.Event()  # Ctrl-C or SIGTERM: finish the step, save a checkpoint, stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds only the result (DeepSpeed prints too)
        result = train_single_process(run, args.out, should_stop=stop.is_set,
                                      on_metrics=TrainingProgress(run.name, run.tokens_seen, every=5))
    print(json.dumps(result, indent=2))
    if result["status"] == "interrupted":
        print(f"stopped with a checkpoint in {args.out}; run the same command again to resume", file=sys.stderr)
        return 130
    return 0 if result["status"] == "ok" else 1
