"""Command lines the end-to-end tests share."""

from pathlib import Path


def small_job(cache: Path, out: Path, *overrides: str) -> list[str]:
    """Arguments of a one-fold, two-epoch job on the small demo corpus (flags, then the config
    overrides and `overrides`: the command's own flags go before them)."""
    return [
        "--folds",
        "1",
        "--output-dir",
        str(out),
        f"data.cache_dir={cache}",
        "data.demo_utterances_per_speaker=12",
        "data.val_fraction=0.25",
        "data.max_seconds=1.0",
        "train.epochs=2",
        "model.head_hidden=64",
        *overrides,
    ]
