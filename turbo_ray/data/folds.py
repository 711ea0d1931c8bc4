"""The outer folds of a manifest (any corpus with `session`, `speaker` and `label` columns): one
per value of `session`, the row's outer fold (an IEMOCAP session, a group of a metadata.csv corpus,
or a fold of whole groups: `group_folds`); or the one fold of a given train/validation/test split.

    folds = outer_folds(manifest, val_fraction=0.1, seed=0, val_split="speaker")
    fold_splits(folds[0])      # {"train": ids, "val": ids}: all that training sees of fold 1

Each fold tests its own rows; its validation set is carved, seeded, from the other folds' rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from turbo_ray.errors import CorpusError


@dataclass(frozen=True)
class OuterFolds:
    """How a corpus is cut into outer folds, for titles and results.json: `kind` (`KINDS`) and
    the groups each fold tests."""

    kind: str
    groups: dict[int, list[str]]  # fold (its `session` value) → the groups it tests

    @property
    def title(self) -> str:
        return KINDS[self.kind].format(k=len(self.groups))

    def record(self) -> dict:
        """What results.json keeps of it."""
        return {"kind": self.kind, "title": self.title, "groups": self.groups}


KINDS = {  # outer folds → how tables name them
    "loso": "leave-one-session-out",
    "logo": "leave-one-group-out",
    "group-kfold": "group {k}-fold",
    "split": "train/validation/test split",
}


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare
class Fold:
    """One outer fold: test = the rows whose `session` (the manifest's outer-fold column) is
    `number`; train and val from the other rows."""

    number: int  # 1, 2, …; `FINAL` for the final model's fold
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def fold_splits(fold: Fold) -> dict[str, list[str]]:
    """The utterance ids a run of this fold trains ("train") and selects ("val") on: never its
    test rows'."""
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


def outer_folds(
    manifest: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0, val_split: str = "random"
) -> list[Fold]:
    """One fold per value of `session` (sorted): test = its rows; val carved from the other rows,
    seeded (`val_split`: one of `config.VAL_SPLITS`)."""
    carve = _speaker_val if val_split == "speaker" else _random_val
    keys = sorted(int(k) for k in manifest["session"].unique())
    if len(keys) < 2:
        raise CorpusError(
            f"only one outer fold ({keys}) in the corpus: outer folds need two IEMOCAP sessions "
            "or two metadata.csv groups"
        )
    folds = []
    for key in keys:
        is_test = (manifest["session"] == key).to_numpy()
        rest = manifest[~is_test]
        is_val = carve(rest, val_fraction, np.random.default_rng([seed, key]))
        folds.append(
            Fold(
                key,
                rest[~is_val].reset_index(drop=True),
                rest[is_val].reset_index(drop=True),
                manifest[is_test].reset_index(drop=True),
            )
        )
    return folds


def group_folds(groups: pd.Series, folds: int | None, seed: int) -> tuple[np.ndarray, dict]:
    """Each row's outer fold (1..) from its group: one fold per group (sorted), or `folds` folds of
    whole groups, dealt in a seeded order, each next group to the fold with the fewest rows.
    Returns the folds and each fold's groups."""
    names = sorted(groups.unique())
    if folds is None:
        of = {name: k for k, name in enumerate(names, 1)}
    else:
        if folds > len(names):
            raise ValueError(f"data.folds={folds} needs at least {folds} groups, got {len(names)}")
        sizes = groups.value_counts()
        order = np.random.default_rng(seed).permutation(names)
        order = sorted(order, key=lambda name: -sizes[name])  # stable: ties keep the seeded order
        rows, of = np.zeros(folds, dtype=int), {}
        for name in order:
            k = int(rows.argmin())
            of[name], rows[k] = k + 1, rows[k] + sizes[name]
    fold_groups = {k: sorted(n for n in names if of[n] == k) for k in sorted(set(of.values()))}
    return groups.map(of).to_numpy(), fold_groups


FINAL = 0  # the final model's fold: every utterance trains or validates, none is tested


def final_fold(manifest: pd.DataFrame, val_fraction: float, seed: int, val_split: str) -> Fold:
    """The final model's fold: validation carved from the whole corpus as in `outer_folds`, the
    rest trains, no test (the outer folds' scores are this model's estimate)."""
    carve = _speaker_val if val_split == "speaker" else _random_val
    is_val = carve(manifest, val_fraction, np.random.default_rng([seed, FINAL]))
    parts = (manifest[~is_val], manifest[is_val], manifest.iloc[:0])
    return Fold(FINAL, *(part.reset_index(drop=True) for part in parts))


def split_fold(manifest: pd.DataFrame, val_fraction: float, seed: int, val_split: str) -> Fold:
    """The one fold of a given split (`manifest.split`: train / validation / test); without
    validation rows, validation is carved from train as in `outer_folds`."""
    split = manifest["split"]
    train, test = manifest[split == "train"], manifest[split == "test"]
    val = manifest[split == "validation"]
    if val.empty:
        carve = _speaker_val if val_split == "speaker" else _random_val
        is_val = carve(train, val_fraction, np.random.default_rng([seed, 1]))
        train, val = train[~is_val], train[is_val]
    return Fold(1, *(part.reset_index(drop=True) for part in (train, val, test)))
