"""The subcommands around the jobs: `config` (the resolved config), `prepare` (a corpus and its
shards), `export` (a checkpoint's model folder) and `predict` (a model folder's predictions)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from turbo_ray.cli.args import Command, config_flags, config_from_args, data_dir_flag, sets
from turbo_ray.errors import UsageError


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_from_args(args).to_dict(), sort_keys=False), end="")
    return 0


CONFIG = Command(
    "config", "print the resolved config (defaults + file + overrides)", config_flags, cmd_config
)


def prepare_flags(parser: argparse.ArgumentParser) -> None:
    config_flags(parser)
    data_dir_flag(parser)
    parser.add_argument(
        "--shards-dir",
        metavar="DIR",
        help="where the shards go: a local path or a URI such as s3://bucket/prefix "
        f"{sets('data.shards_dir', '<data.cache_dir>/shards/<corpus fingerprint>')}",
    )
    parser.add_argument("--strict", action="store_true", help="any corpus problem is an error")


def cmd_prepare(args: argparse.Namespace) -> int:
    from turbo_ray.data.corpus import prepare_corpus

    corpus = prepare_corpus(config_from_args(args).data, strict=args.strict)
    print(corpus.summary())
    counts = corpus.manifest.groupby(["session", "label"]).size().unstack(fill_value=0)
    counts = counts.rename_axis(index="outer fold")[list(corpus.classes)]
    print(f"utterances per outer fold ({corpus.outer.title}) and class:\n{counts.to_string()}")
    print(f"shards   {corpus.shards}")
    return 0


PREPARE = Command(
    "prepare",
    "parse the corpus (IEMOCAP, a metadata.csv, the demo), report its problems and write its "
    "shards",
    prepare_flags,
    cmd_prepare,
)


def export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (results.json names each fold's)")
    parser.add_argument("out", help="the model folder to create")


def cmd_export(args: argparse.Namespace) -> int:
    from turbo_ray.classifier import export_checkpoint

    print(f"model folder {export_checkpoint(args.checkpoint, args.out)}")
    return 0


EXPORT = Command(
    "export", "write a checkpoint's self-contained model folder", export_flags, cmd_export
)


def predict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a folder written by `turbo-ray export` (or --final)")
    source = parser.add_mutually_exclusive_group(required=True)
    data_dir_flag(source)
    source.add_argument("--csv", help="a CSV of path,text[,label] (paths relative to it)")
    source.add_argument("--wav", help="one recording (with --text)")
    parser.add_argument("--text", help="the transcript of --wav")
    parser.add_argument(
        "--out", default="predictions.csv", help="the predictions CSV (default: %(default)s)"
    )
    parser.add_argument(
        "--actors",
        type=int,
        help="0: predict in this process; N: through Ray Data, N models side by side "
        "(default: in process up to 500 utterances)",
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave out bad inputs, listing them"
    )
    parser.add_argument("--address", help="the Ray cluster of --actors ('auto' on a head node)")


def cmd_predict(args: argparse.Namespace) -> int:
    from turbo_ray.classifier import load_classifier
    from turbo_ray.predict import format_scores, predict, read_inputs, write_predictions

    if bool(args.wav) != bool(args.text is not None):
        raise UsageError("--wav and --text go together: one recording and its transcript")
    classifier = load_classifier(args.model_dir)
    inputs = read_inputs(
        classifier.classes,
        classifier.cfg.data.classes,
        data_dir=args.data_dir,
        csv=args.csv,
        wav=args.wav,
        text=args.text,
        skip_bad=args.skip_bad,
    )
    for skipped in inputs.skipped:
        print(f"skipped  {skipped}")
    table = predict(args.model_dir, inputs, args.actors, args.address)
    print(f"{len(table)} predictions: {write_predictions(table, Path(args.out))}")
    if len(table) == 1:
        print(table.drop(columns="utterance_id").to_string(index=False))
    if inputs.labelled:
        print(format_scores(table, classifier))
    return 0


PREDICT = Command(
    "predict",
    "classify recordings with a model folder: writes the predictions CSV, scores labelled ones",
    predict_flags,
    cmd_predict,
)
