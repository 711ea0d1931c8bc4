"""Leave-one-session-out evaluation of one given config: a TorchTrainer per fold, tested with the
checkpoint of its best validation epoch (protocol "loso"); result tables shared with the nested
search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from turbo_ray.config import Config, ConfigError, override
from turbo_ray.data.corpus import Corpus
from turbo_ray.data.iemocap import Fold
from turbo_ray.paths import storage_uri
from turbo_ray.plots import plot_confusion
from turbo_ray.train import best_checkpoint, build_trainer, prune_checkpoints

SCORES = ("wa", "ua", "f1")
PROTOCOL = "loso"  # one given config, no search: only the best epoch is selected, on validation


def fold_splits(fold: Fold, with_test: bool = True) -> dict[str, list[str]]:
    """The utterance ids of a fold's splits."""
    splits = {"train": fold.train, "val": fold.val} | ({"test": fold.test} if with_test else {})
    return {name: df.utterance_id.tolist() for name, df in splits.items()}


def run_fold(cfg: Config, corpus: Corpus, fold: Fold, name: str) -> dict:
    """Train on one fold (resuming `name` if it exists) and return the best-val epoch's
    test scores."""
    trainer = build_trainer(cfg, corpus.shards, fold_splits(fold), corpus.classes, name)
    result = trainer.fit()
    checkpoint, best = best_checkpoint(result, cfg.tune.metric)
    return {
        "test_session": fold.test_session,
        "best_epoch": best["epoch"],
        cfg.tune.metric: best[cfg.tune.metric],
        **{k: best[f"test_{k}"] for k in SCORES},
        "n_test": best["test_n"],
        "confusion": best["test_confusion"],
        "checkpoint": checkpoint.path,
    }


def run_loso(cfg: Config, corpus: Corpus, sessions: list[int], name: str = "loso") -> pd.DataFrame:
    """The LOSO folds that test `sessions`, one row per fold."""
    folds = [fold for fold in corpus.folds(cfg.data) if fold.test_session in sessions]
    if not folds:
        raise ConfigError(f"no LOSO fold tests session(s) {sessions} in {corpus.label}")
    runs = [f"{name}-s{fold.test_session}" for fold in folds]
    rows = [run_fold(cfg, corpus, fold, run) for fold, run in zip(folds, runs)]
    if not cfg.train.keep_checkpoints:  # only the weights the table came from stay
        for run, row in zip(runs, rows):
            prune_checkpoints(f"{storage_uri(cfg.train.storage_path)}/{run}", {row["checkpoint"]})
    return pd.DataFrame(rows)


def run_modes(
    cfg: Config, corpus: Corpus, modes: list[str], seeds: list[int], sessions: list[int]
) -> tuple[pd.DataFrame, list[str] | None]:
    """`run_loso` for each loss mode and training seed; returns the rows (with `mode` and `seed`
    columns) and the columns to group the table by (None for a single run)."""
    frames = []
    for mode in modes:
        for seed in seeds:
            run_cfg = override(cfg, {"loss.mode": mode, "train.seed": seed})
            rows = run_loso(run_cfg, corpus, sessions, name=f"{mode}-seed{seed}")
            frames.append(rows.assign(mode=mode, seed=seed))
    by = ["mode"] if len(modes) > 1 or len(seeds) > 1 else None
    return pd.concat(frames, ignore_index=True), by


def with_mean_std(results: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per-fold rows plus mean and std rows of WA / UA / F1
    (per group of `by` columns, if given)."""
    groups = results.groupby(by, sort=False) if by else [((), results)]
    frames = []
    for key, group in groups:
        stats = group[list(SCORES)].agg(["mean", "std"])  # one fold: no std (NaN)
        extra = dict(zip(by, key if isinstance(key, tuple) else (key,))) if by else {}
        frames += [
            group,
            pd.DataFrame([{**extra, "test_session": s, **stats.loc[s]} for s in ("mean", "std")]),
        ]
    return pd.concat(frames, ignore_index=True)


def format_table(results: pd.DataFrame, title: str, by: list[str] | None = None) -> str:
    table = with_mean_std(results, by)
    columns = (by or []) + [c for c in ("seed",) if c in table] + ["test_session", *SCORES]
    if "seed" in table:  # an integer label, blank on the mean/std rows
        table["seed"] = table["seed"].map(lambda seed: "" if pd.isna(seed) else str(int(seed)))
    body = table[columns].to_string(
        index=False, float_format=lambda x: "     –" if np.isnan(x) else f"{100 * x:6.2f}"
    )
    return f"{title}\n(WA = accuracy, UA = mean per-class recall, F1 = macro-F1; in %)\n{body}"


def write_results(
    results: pd.DataFrame,
    out_dir: Path,
    classes: list[str],
    cfg: Config,
    protocol: str,
    by: list[str] | None = None,
    search: dict | None = None,
) -> list[Path]:
    """results.csv, results.json (the protocol, the config, `search`: what selected the configs,
    per-fold rows) and a summed confusion-matrix PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = with_mean_std(results, by)
    paths = [out_dir / "results.csv", out_dir / "results.json", out_dir / "confusion.png"]
    table.drop(columns=["confusion"], errors="ignore").to_csv(paths[0], index=False)
    paths[1].write_text(
        json.dumps(
            {
                "protocol": protocol,
                "config": cfg.to_dict(),
                "classes": list(classes),
                **({"search": search} if search else {}),
                "folds": json.loads(results.to_json(orient="records")),
            },
            indent=1,
        )
    )
    plot_confusion(np.sum([np.array(c) for c in results.confusion], axis=0), classes, paths[2])
    return paths
