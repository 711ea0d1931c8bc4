"""Leave-one-session-out folds of a manifest (any corpus with `session`, `speaker` and `label`
columns: an IEMOCAP release, the demo corpus).

    folds = loso_folds(manifest, val_fraction=0.1, seed=0, val_split="speaker")
    fold_splits(folds[0])      # {"train": ids, "val": ids}: all that training sees of fold 1

Each fold tests one session; its validation set is carved, seeded, from the other sessions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare
class Fold:
    """One leave-one-session-out fold: test = session `test_session`; train and val from the
    other sessions."""

    test_session: int
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def fold_splits(fold: Fold) -> dict[str, list[str]]:
    """The utterance ids a run of this fold trains ("train") and selects ("val") on: never its
    test session's."""
    return {"train": fold.train.utterance_id.tolist(), "val": fold.val.utterance_id.tolist()}


def _random_val(rest: pd.DataFrame, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of a validation set stratified by label: `fraction` of each label's rows, rounded."""
    mask = np.zeros(len(rest), dtype=bool)
    for positions in rest.groupby("label", sort=True).indices.values():
        mask[rng.choice(positions, int(fraction * len(positions) + 0.5), replace=False)] = True
    return mask


def _speaker_val(rest: pd.DataFrame, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of a validation set of whole speakers: `fraction` of the speakers
    (at least one, never all)."""
    speakers = np.array(sorted(rest["speaker"].unique()))
    count = (
        min(max(1, int(fraction * len(speakers) + 0.5)), len(speakers) - 1) if fraction > 0 else 0
    )
    return rest["speaker"].isin(rng.choice(speakers, count, replace=False)).to_numpy()


def loso_folds(
    manifest: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0, val_split: str = "random"
) -> list[Fold]:
    """One fold per session present (sorted): test = that session; val carved from the other
    sessions, seeded (`val_split`: one of `config.VAL_SPLITS`)."""
    carve = _speaker_val if val_split == "speaker" else _random_val
    sessions = sorted(int(s) for s in manifest["session"].unique())
    if len(sessions) < 2:
        raise ValueError(f"leave-one-session-out needs at least two sessions, got {sessions}")
    folds = []
    for session in sessions:
        is_test = (manifest["session"] == session).to_numpy()
        rest = manifest[~is_test]
        is_val = carve(rest, val_fraction, np.random.default_rng([seed, session]))
        folds.append(
            Fold(
                session,
                rest[~is_val].reset_index(drop=True),
                rest[is_val].reset_index(drop=True),
                manifest[is_test].reset_index(drop=True),
            )
        )
    return folds
