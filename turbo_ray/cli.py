"""`turbo-ray` command line: one subcommand per job
(the experiments/ scripts call the same code)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from turbo_ray.config import MODES, Config, ConfigError, load_config
from turbo_ray.paths import RunPaths, latest_output_dir, new_output_dir, read_text, write_text

if TYPE_CHECKING:
    from turbo_ray.data.corpus import Corpus
    from turbo_ray.tracking import Tracker


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


def add_run_args(parser: argparse.ArgumentParser, workers_flag: str = "--num-workers") -> None:
    add_config_args(parser)
    parser.add_argument(
        "--data-dir", help="IEMOCAP_full_release folder (default: the generated demo corpus)"
    )
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
    flags = {
        "data.data_dir": getattr(args, "data_dir", None),
        "model.preset": getattr(args, "preset", None),
        "train.num_workers": getattr(args, "num_workers", None),
        "train.use_gpu": True if getattr(args, "use_gpu", False) or (gpus or 0) > 0 else None,
        "train.gpus_per_worker": gpus,
        "tune.search_space": getattr(args, "search_space", None),
        "tune.num_samples": getattr(args, "num_samples", None),
        "tune.max_concurrent_trials": getattr(args, "max_concurrent_trials", None),
        "tune.folds": getattr(args, "tune_folds", None),
    }
    from_flags = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.config, from_flags + list(args.overrides))


def cmd_config(args: argparse.Namespace) -> int:
    """Print the fully resolved config as YAML."""
    print(yaml.safe_dump(config_from_args(args).to_dict(), sort_keys=False), end="")
    return 0


class UsageError(Exception):
    """A command that cannot run as given (an output folder, --resume); the message says why."""


def check_output_dir(out: Path, resume: bool) -> None:
    """The output folder must be free for a new experiment, or hold the one to resume."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a folder")
    holds_experiment = (out / RunPaths.CONFIG).is_file()
    if resume and not holds_experiment:
        raise UsageError(
            f"--resume: {out} holds no experiment (no {RunPaths.CONFIG}); to resume from object "
            f"storage alone, pass the same --output-dir name and train.storage_path=<URI>"
        )
    if not resume and holds_experiment:
        raise UsageError(
            f"{out} already holds an experiment: pass --resume, or another --output-dir"
        )


def start_job(
    cfg: Config,
    paths: RunPaths,
    address: str | None,
    resume: bool = False,
    drives_trainers: bool = False,
) -> Corpus:
    """Check the corpus (its problem report is printed) and its folds before Ray starts, as the
    caller checked the output folder; then start (or join) Ray, check it (`drives_trainers`: the
    job's trials drive TorchTrainers) and only then save the job's config, so that a Ray that
    cannot run the job leaves the folder free for the same command."""
    from turbo_ray.data.corpus import prepare_corpus
    from turbo_ray.progress import quiet_ray_logs
    from turbo_ray.runtime import init_ray, require_driver_resource, running_ray

    corpus = prepare_corpus(cfg.data)
    print_corpus(corpus)
    corpus.folds(cfg.data)  # every split non-empty
    print(f"experiment {paths.out}{'  (resumed)' if resume else ''}")
    print(f"Ray's own log: {quiet_ray_logs(paths.ray_log)}")
    if not address and (running := running_ray()):
        print(f"joining the Ray already running here at {running} (--address picks another)")
    dashboard = init_ray(address)
    if dashboard:
        print(f"Ray dashboard: {dashboard}  (trials, workers, CPU/GPU and memory use)")
    if drives_trainers:
        require_driver_resource()
    if not resume:
        paths.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if paths.stored_config:
            write_text(paths.stored_config, paths.config.read_text())
    return corpus


def print_corpus(corpus: Corpus) -> None:
    label = "  (demo corpus: a fixture, not real speech)" if corpus.is_demo else ""
    print(
        f"corpus {corpus.root}{label}: {len(corpus.manifest)} utterances "
        f"in {len(corpus.classes)} classes"
    )
    print(corpus.report.summary())


def cmd_prepare(args: argparse.Namespace) -> int:
    """Parse the corpus, report its problems and write its Parquet shards."""
    from turbo_ray.data.corpus import prepare_corpus

    cfg = config_from_args(args)
    if args.out:
        cfg.data.shards_dir = args.out
    corpus = prepare_corpus(cfg.data, strict=args.strict)
    print_corpus(corpus)
    counts = corpus.manifest.groupby(["session", "label"]).size().unstack(fill_value=0)
    print(f"{len(corpus.manifest)} utterances in {cfg.data.classes}:\n{counts.to_string()}")
    print(f"shards   {corpus.shards}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One config over the LOSO folds, for each requested mode and seed;
    prints and writes the table."""
    from turbo_ray.config import override
    from turbo_ray.loso import PROTOCOL, format_table, run_modes, write_results

    cfg = config_from_args(args)
    paths = RunPaths.of(Path(args.output_dir or new_output_dir("train")), cfg.train.storage_path)
    modes, seeds = args.mode.split(","), [int(s) for s in args.seeds.split(",")]
    if bad := [m for m in modes if m not in MODES]:
        raise ConfigError(f"--mode {bad} not in {MODES}")
    check_output_dir(paths.out, resume=False)
    cfg = override(cfg, {"train.storage_path": paths.checkpoints})
    corpus = start_job(cfg, paths, args.address)
    sessions = [args.fold] if args.fold else list(range(1, args.folds + 1))
    results, by = run_modes(cfg, corpus, modes, seeds, sessions)
    print("\n" + format_table(results, f"Test scores of the best-val epoch, {corpus.label}", by))
    for path in write_results(results, paths.out, list(corpus.classes), cfg, PROTOCOL, by):
        print(f"wrote {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """The main job: nested leave-one-session-out search and test (see turbo_ray/experiment.py)."""
    from turbo_ray.experiment import PROTOCOL, run_nested, selection_table
    from turbo_ray.loso import format_table, write_results
    from turbo_ray.progress import SearchProgress
    from turbo_ray.tracking import Tracker
    from turbo_ray.tune import load_search_space, search_record, trains_in_trial

    out = resume_dir(args) if args.resume else Path(args.output_dir or new_output_dir("tune"))
    if args.resume:
        fetch_stored_config(out, config_from_args(args))
    check_output_dir(out, args.resume)
    # resume: its own
    cfg = load_config(out / RunPaths.CONFIG) if args.resume else config_from_args(args)
    paths = RunPaths.of(out, cfg.train.storage_path)
    space = load_search_space(cfg.tune.search_space)
    corpus = start_job(cfg, paths, args.address, args.resume, not trains_in_trial(cfg))
    print(
        f"nested leave-one-session-out over {cfg.tune.folds} folds: "
        f"per fold, {cfg.tune.num_samples} "
        f"trials (TPE + ASHA on each trial's best {cfg.tune.metric}) on the other sessions only"
    )

    tracker = Tracker.open(cfg, paths, PROTOCOL, corpus.label)
    total = cfg.tune.folds * cfg.tune.num_samples
    searched = [p.key for p in space.params]
    progress = SearchProgress(total, cfg.tune.metric, cfg.train.epochs, searched)
    results, written = run_nested(cfg, corpus, space, paths, tracker, args.resume, [progress])
    search = search_record(space, cfg, results.test_session.tolist())
    written += write_results(results, paths.out, list(corpus.classes), cfg, PROTOCOL, search=search)
    tracker.log_folds(results, cfg, list(corpus.classes))
    tracker.finish(results, written)
    print("\n" + selection_table(results, cfg))
    print(
        "\n"
        + format_table(
            results,
            f"Nested leave-one-session-out ({PROTOCOL}): test scores of each "
            f"fold's selected checkpoint, {corpus.label}",
        )
    )
    print("\n" + "\n".join(f"wrote {p}" for p in written))
    print(watch_commands(paths, tracker, joined=bool(args.address)))
    return 0


def watch_commands(paths: RunPaths, tracker: Tracker, joined: bool) -> str:
    """How to look at the finished experiment: MLflow's UI, TensorBoard, and the dashboard
    (`joined`: of a cluster that outlives the job)."""
    lines = [
        "\nCompare the trials and folds:",
        f"  MLflow:      {tracker.ui_command()}   (then http://127.0.0.1:5000)",
    ]
    if "://" not in str(paths.search):  # Tune's event files, where this machine can read them
        tensorboard = Path(sys.executable).parent / "tensorboard"
        lines.append(f"  TensorBoard: {os.path.relpath(tensorboard)} --logdir {paths.search}")
    if not joined:
        lines.append(
            "  The Ray dashboard lived as long as this job's local Ray; to keep one, start Ray "
            "first (`ray start --head --resources '{\"train_driver\": 64}'`): jobs join it "
            "(README: Watching a run)."
        )
    return "\n".join(lines)


def fetch_stored_config(out: Path, given: Config) -> None:
    """--resume where the output folder is gone (another machine, a deleted folder): with
    `train.storage_path=<URI>` given, the config the job stored there is fetched into `out`."""
    stored = RunPaths.of(out, given.train.storage_path).stored_config
    if (out / RunPaths.CONFIG).is_file() or not stored or (text := read_text(stored)) is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / RunPaths.CONFIG).write_text(text)
    print(f"config fetched from {stored}")


def cmd_local_cluster(args: argparse.Namespace) -> int:
    """Start (or stop) the cluster of a `ray up` config as local processes, Ray's fake multi-node
    provider: the same node types, autoscaled from 0, token auth, the dashboard on 127.0.0.1."""
    from turbo_ray.cluster import FAKE_HEAD, LOCAL_GPU, start_local_cluster, stop_local_cluster
    from turbo_ray.config import DataConfig

    config = Path(DataConfig().cache_dir).expanduser() / "local-cluster.yaml"
    if args.action == "down":
        print(stop_local_cluster(config))
        return 0
    raw = yaml.safe_load(Path(args.path).read_text())
    try:
        fake = start_local_cluster(raw, config, args.idle_timeout_minutes)
    except RuntimeError as err:
        raise UsageError(str(err)) from err
    print(f"local cluster up from {args.path} ({config}):")
    for name, spec in fake["available_node_types"].items():
        if name == FAKE_HEAD:
            print(f"  head: {spec['resources']} (drivers only)")
        else:
            print(
                f"  {name}: 0-{spec['max_workers']} nodes of {spec['resources']}, added on demand"
            )
    print(
        f"  idle workers removed after {fake['idle_timeout_minutes']} min; "
        "token auth on (the token: ~/.ray/auth_token); dashboard http://127.0.0.1:8265\n"
        "Submit the main job as on the real cluster, asking for the stand-in GPU resource (jobs\n"
        "start in this folder; no --working-dir: the fake nodes share this disk):\n"
        "  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- \\\n"
        f"    {sys.executable} experiments/tune_iemocap.py --address auto --use-gpu "
        f"train.gpu_resource={LOCAL_GPU}\n"
        "Stop it (its processes only, not another Ray of this machine): "
        "turbo-ray local-cluster down"
    )
    return 0


def resume_dir(args: argparse.Namespace) -> Path:
    """--output-dir, or the newest runs/tune-* folder."""
    if args.output_dir:
        return Path(args.output_dir).resolve()
    if (latest := latest_output_dir("tune")) is None:
        raise UsageError("--resume: no runs/tune-* experiment here; pass --output-dir DIR")
    return latest


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
        "prepare", help="parse IEMOCAP (or the demo corpus) and write Parquet shards"
    )
    add_config_args(p)
    p.add_argument(
        "--data-dir", help="IEMOCAP_full_release folder (default: the generated demo corpus)"
    )
    p.add_argument(
        "--out", help="shards location: a local path or a URI such as s3://bucket/prefix"
    )
    p.add_argument("--strict", action="store_true", help="any corpus problem is an error")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one config over the leave-one-session-out folds")
    add_run_args(p)
    p.add_argument("--mode", default="turbo", help=f"comma-separated subset of {','.join(MODES)}")
    folds = p.add_mutually_exclusive_group()
    folds.add_argument("--folds", type=int, default=5, help="LOSO folds: test sessions 1..N")
    folds.add_argument("--fold", type=int, help="one LOSO fold: test session K only")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
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
    p.add_argument("--max-concurrent-trials", type=int, help="trials running at once")
    p.add_argument(
        "--folds",
        dest="tune_folds",
        type=int,
        help="outer LOSO folds: test sessions 1..N, each with its own search (default 5)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment in --output-dir "
        "(default: the newest runs/tune-*)",
    )
    p.set_defaults(func=cmd_tune)

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
    p.set_defaults(func=cmd_local_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    from turbo_ray.data.iemocap import CorpusError
    from turbo_ray.data.shards import ShardError
    from turbo_ray.runtime import ClusterError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ClusterError, ConfigError, CorpusError, ShardError, UsageError) as err:
        print(f"turbo-ray: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
