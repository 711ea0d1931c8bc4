"""`turbo-ray` command line: one subcommand per job
(the experiments/ scripts call the same code)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from turbo_ray.config import MODES, Config, load_config
from turbo_ray.errors import ConfigError, UsageError, UserError
from turbo_ray.paths import is_uri, local_cluster_config

if TYPE_CHECKING:
    from turbo_ray.experiment import JobResult


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML config file (sections data, model, loss, train, tune)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="dotted overrides applied after the file, e.g. loss.temperature=0.1",
    )


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="IEMOCAP_full_release, or a folder with a metadata.csv "
        "(default: the generated demo corpus)",
    )


def add_run_args(parser: argparse.ArgumentParser, workers_flag: str = "--num-workers") -> None:
    add_config_args(parser)
    add_data_dir(parser)
    parser.add_argument("--preset", help="encoder preset: tiny (default), base, large")
    parser.add_argument(
        workers_flag,
        dest="num_workers",
        type=int,
        help="Ray Train workers per run (DDP, one per GPU)",
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    parser.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per worker (implies --use-gpu if > 0)"
    )
    parser.add_argument(
        "--address", help="join a running Ray cluster ('auto' on a `ray up` head node)"
    )
    parser.add_argument("--output-dir", help="experiment folder (default: runs/<job>-<time>)")


def config_from_args(args: argparse.Namespace) -> Config:
    """File, then the dedicated flags, then the dotted overrides (last word wins)."""
    gpus = getattr(args, "gpus_per_worker", None)
    modes, seeds = getattr(args, "tune_modes", None), getattr(args, "tune_seeds", None)
    flags = {
        "data.data_dir": getattr(args, "data_dir", None),
        "model.preset": getattr(args, "preset", None),
        "train.num_workers": getattr(args, "num_workers", None),
        "train.use_gpu": True if getattr(args, "use_gpu", False) or (gpus or 0) > 0 else None,
        "train.gpus_per_worker": gpus,
        "tune.search_space": getattr(args, "search_space", None),
        "tune.num_samples": getattr(args, "num_samples", None),
        "tune.max_concurrent_trials": getattr(args, "max_concurrent_trials", None),
        "tune.trials_at_once": getattr(args, "trials_at_once", None),
        "tune.folds": getattr(args, "tune_folds", None),
        "tune.modes": modes and modes.split(","),
        "tune.seeds": seeds and seeds_from(seeds),
        "tune.final": True if getattr(args, "final", False) else None,
    }
    from_flags = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.config, from_flags + list(args.overrides))


def cmd_config(args: argparse.Namespace) -> int:
    """Print the fully resolved config as YAML."""
    print(yaml.safe_dump(config_from_args(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Parse the corpus, report its problems and write its Parquet shards."""
    from turbo_ray.data.corpus import prepare_corpus

    cfg = config_from_args(args)
    if args.out:
        cfg.data.shards_dir = args.out
    corpus = prepare_corpus(cfg.data, strict=args.strict)
    print(corpus.summary())
    counts = corpus.manifest.groupby(["session", "label"]).size().unstack(fill_value=0)
    counts = counts.rename_axis(index="outer fold")[list(corpus.classes)]
    print(f"utterances per outer fold ({corpus.outer.title}) and class:\n{counts.to_string()}")
    print(f"shards   {corpus.shards}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One config over the LOSO folds, for each requested mode and seed;
    prints and writes the table."""
    from turbo_ray.experiment import run_final, run_fixed

    out = Path(args.output_dir) if args.output_dir else None
    if args.final:
        if args.mode or args.seeds or args.fold:
            raise UsageError("--final trains the config's loss.mode and train.seed on all folds")
        model = run_final(config_from_args(args), out, args.address)
        print(f"\nfinal model: {model}\n  turbo-ray predict {model} --wav FILE --text TEXT")
        return 0
    result = run_fixed(
        config_from_args(args),
        out,
        modes=args.mode.split(",") if args.mode else None,
        seeds=seeds_from(args.seeds) if args.seeds else None,
        sessions=[args.fold] if args.fold else args.folds and list(range(1, args.folds + 1)),
        address=args.address,
    )
    print(f"\n{result.table()}\n")
    if compared := result.compared():
        print(f"{compared}\n")
    print("\n".join(f"wrote {p}" for p in result.files))
    print(watch_commands(result))
    return 0


def seeds_from(flag: str) -> list[int]:
    """--seeds 0,1,2 as integers; anything else is a one-line error."""
    try:
        return [int(seed) for seed in flag.split(",")]
    except ValueError:
        raise ConfigError(
            f"--seeds {flag!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None


def cmd_tune(args: argparse.Namespace) -> int:
    """The main job: nested leave-one-session-out search and test (see turbo_ray/experiment.py)."""
    from turbo_ray.experiment import run_nested

    out = Path(args.output_dir) if args.output_dir else None
    result = run_nested(config_from_args(args), out, args.resume, args.address)
    print(f"\n{result.selection()}\n\n{result.table()}\n")
    if compared := result.compared():
        print(f"{compared}\n")
    if result.model:
        print(
            f"final model: {result.model} (the table above estimates it; "
            f"turbo-ray predict {result.model} --wav FILE --text TEXT)\n"
        )
    print("\n".join(f"wrote {p}" for p in result.files))
    print(watch_commands(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's self-contained model folder."""
    from turbo_ray.checkpoints import export_checkpoint

    print(f"model folder {export_checkpoint(args.checkpoint, args.out)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify recordings with a model folder; writes predictions.csv, scores labelled ones."""
    from turbo_ray.classifier import load_classifier
    from turbo_ray.predict import format_scores, predict, read_inputs

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
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")
    table.to_csv(partial, index=False)
    partial.rename(out)  # whole or not at all
    print(f"{len(table)} predictions: {out}")
    if len(table) == 1:
        print(table.drop(columns="utterance_id").to_string(index=False))
    if inputs.labelled:
        print(format_scores(table, classifier))
    return 0


def watch_commands(result: JobResult) -> str:
    """How to look at the finished experiment: MLflow's UI, TensorBoard (a search's), and the
    dashboard (of a cluster that outlives the job)."""
    lines = [
        "\nCompare the runs:",
        f"  MLflow:      {result.tracker.ui_command()}   (then http://127.0.0.1:5000)",
    ]
    search = result.paths.search
    if result.nested and not is_uri(search):  # Tune's event files, here
        tensorboard = Path(sys.executable).parent / "tensorboard"
        lines.append(f"  TensorBoard: {os.path.relpath(tensorboard)} --logdir {search}")
    if not result.joined:
        lines.append(
            "  The Ray dashboard lived as long as this job's local Ray; to keep one, start Ray "
            "first (`ray start --head --resources '{\"train_driver\": 64}'`): jobs join it "
            "(README: Watching a run)."
        )
    return "\n".join(lines)


def cmd_local_cluster(args: argparse.Namespace) -> int:
    """Start (or stop) the cluster of a `ray up` config as local processes, Ray's fake multi-node
    provider: the same node types, autoscaled from 0, token auth, the dashboard on 127.0.0.1."""
    from turbo_ray.cluster import (
        DASHBOARD_PORT,
        FAKE_HEAD,
        GCS_PORT,
        LOCAL_GPU,
        start_local_cluster,
        stop_local_cluster,
        token_path,
    )

    config = local_cluster_config(config_from_args(args).data)
    if args.action == "down":
        print(stop_local_cluster(config))
        return 0
    raw = yaml.safe_load(Path(args.path).read_text())
    ports = (args.port or GCS_PORT, args.dashboard_port or DASHBOARD_PORT)
    token, written = token_path(), not token_path().exists()
    try:
        fake = start_local_cluster(raw, config, args.idle_timeout_minutes, *ports)
    except RuntimeError as err:
        raise UsageError(str(err)) from err
    dashboard = f"http://127.0.0.1:{ports[1]}"
    print(f"local cluster up from {args.path} ({config}):")
    for name, spec in fake["available_node_types"].items():
        if name == FAKE_HEAD:
            print(f"  head: {spec['resources']} (drivers only)")
        else:
            print(
                f"  {name}: 0-{spec['max_workers']} nodes of {spec['resources']}, added on demand"
            )
    if written:
        print(
            f"wrote a Ray token to {token}: from now on every `ray start --head` on this machine\n"
            "turns token auth on, and jobs that join a Ray send it (RAY_AUTH_MODE=disabled: off)"
        )
    print(
        f"  idle workers removed after {fake['idle_timeout_minutes']} min; "
        f"token auth on (the token: {token}); dashboard {dashboard}\n"
        "Submit the main job as on the real cluster, asking for the stand-in GPU resource (jobs\n"
        "start in this folder; no --working-dir: the fake nodes share this disk):\n"
        f"  RAY_AUTH_MODE=token ray job submit --address {dashboard} -- \\\n"
        f"    {sys.executable} experiments/tune_iemocap.py --address auto --use-gpu "
        f"train.gpu_resource={LOCAL_GPU}\n"
        "Stop it (its processes only, not another Ray of this machine): "
        "turbo-ray local-cluster down"
    )
    return 0


def cmd_check_cluster(args: argparse.Namespace) -> int:
    """Validate a `ray up` config offline (Ray's schema and this project's rules)."""
    from turbo_ray.cluster import check_cluster_config, describe

    problems = check_cluster_config(args.path)
    print(f"{args.path}:\n{describe(yaml.safe_load(Path(args.path).read_text()))}")
    for problem in problems:
        print(f"  problem: {problem}")
    print("ok: fit to `ray up`" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbo-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "prepare", help="parse the corpus (IEMOCAP, a metadata.csv, the demo) and write its shards"
    )
    add_config_args(p)
    add_data_dir(p)
    p.add_argument(
        "--out", help="shards location: a local path or a URI such as s3://bucket/prefix"
    )
    p.add_argument("--strict", action="store_true", help="any corpus problem is an error")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one config over the leave-one-session-out folds")
    add_run_args(p)
    p.add_argument(
        "--mode", help=f"comma-separated subset of {','.join(MODES)} (default: loss.mode)"
    )
    folds = p.add_mutually_exclusive_group()
    folds.add_argument(
        "--folds", type=int, help="the first N outer folds (default: every fold of the corpus)"
    )
    folds.add_argument("--fold", type=int, help="one LOSO fold: test session K only")
    p.add_argument(
        "--seeds", help="comma-separated training seeds, e.g. 0,1,2 (default: train.seed)"
    )
    p.add_argument(
        "--final",
        action="store_true",
        help="train the config once on all of the corpus and export it to <output-dir>/model "
        "(no test score: its folds' scores estimate it)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "tune", help="the main job: Optuna + ASHA search, then the best config over LOSO folds"
    )
    add_run_args(p, workers_flag="--workers-per-trial")
    p.add_argument(
        "--search-space",
        help="YAML of dotted key → distribution (default: experiments/configs/search_space.yaml)",
    )
    p.add_argument("--num-samples", type=int, help="trials per outer fold")
    p.add_argument("--max-concurrent-trials", type=int, help="trials running at once, in all")
    p.add_argument(
        "--trials-at-once",
        type=int,
        help="trials running at once per search (default 1); the same trials for any cluster",
    )
    p.add_argument(
        "--folds",
        dest="tune_folds",
        type=int,
        help="the first N outer folds, each with its own search (default: every fold)",
    )
    p.add_argument(
        "--modes",
        dest="tune_modes",
        help=f"comma-separated subset of {','.join(MODES)}: the whole protocol once per mode, "
        "equal budgets, compared with the baseline (default: loss.mode)",
    )
    p.add_argument(
        "--seeds",
        dest="tune_seeds",
        help="comma-separated training seeds, e.g. 0,1,2: the protocol once per seed "
        "(default: train.seed)",
    )
    p.add_argument(
        "--final",
        action="store_true",
        help="also search a final model on all of the corpus (same budget) and export it to "
        "<output-dir>/model (the folds' scores are its estimate)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment in --output-dir "
        "(default: the newest runs/tune-*)",
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="write a checkpoint's self-contained model folder")
    p.add_argument("checkpoint", help="a checkpoint folder (results.json names each fold's)")
    p.add_argument("out", help="the model folder to create")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="classify recordings with a model folder")
    p.add_argument("model_dir", help="a folder written by `turbo-ray export` (or --final)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir", help="a corpus folder as tune and train read it (labels scored)"
    )
    source.add_argument("--csv", help="a CSV of path,text[,label] (paths relative to it)")
    source.add_argument("--wav", help="one recording (with --text)")
    p.add_argument("--text", help="the transcript of --wav")
    p.add_argument("--out", default="predictions.csv", help="where predictions go")
    p.add_argument(
        "--actors",
        type=int,
        help="0: predict in this process; N: through Ray Data, N models side by side "
        "(default: in process up to 500 utterances)",
    )
    p.add_argument("--skip-bad", action="store_true", help="leave out bad inputs, listing them")
    p.add_argument("--address", help="the Ray cluster of --actors ('auto' on a head node)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("check-cluster", help="validate a `ray up` cluster.yaml offline")
    p.add_argument("path", nargs="?", default="cluster.yaml")
    p.set_defaults(func=cmd_check_cluster)

    p = sub.add_parser(
        "local-cluster", help="rehearse a `ray up` cluster on this machine (autoscaling, jobs)"
    )
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("path", nargs="?", default="cluster.yaml")
    p.add_argument(
        "--idle-timeout-minutes", type=float, help="remove idle workers sooner than the file says"
    )
    p.add_argument("--port", type=int, help="up: the head's GCS port (default: Ray's)")
    p.add_argument("--dashboard-port", type=int, help="up: the dashboard's (default: Ray's)")
    p.add_argument("--config", help="YAML config file: its data.cache_dir keeps the cluster's file")
    p.set_defaults(overrides=[])
    p.set_defaults(func=cmd_local_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"turbo-ray: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
