"""A model folder's predictions on new recordings: a corpus folder (an IEMOCAP release or a
metadata.csv folder), a CSV of `path,text[,label]` rows, or one pair; in this process, or through
Ray Data over an actor pool (one model per actor) for large inputs.

    inputs = read_inputs(classifier.classes, csv="new.csv")        # checked: every problem named
    table = predict(model_dir, inputs, actors=0)     # utterance_id, predicted, prob_<class>…, label

Every input reaches the model through `recording_rows` (an audio file's bytes and its transcript
as shards hold them), here and in the served model (`turbo_ray.serve`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from turbo_ray.classifier import BATCH, Classifier, load_classifier
from turbo_ray.config.classes import ClassMap
from turbo_ray.data.audiofolder import metadata_file, read_audiofolder
from turbo_ray.data.iemocap import DEFAULT_CLASSES, read_iemocap
from turbo_ray.data.manifest import CorpusReport, wav_info
from turbo_ray.data.shard_writer import encoded_cell
from turbo_ray.errors import InputError
from turbo_ray.metrics import classification_report, confusion_matrix, positive_index

IN_PROCESS_MAX = 500  # utterances predicted in this process by default; more go through Ray Data
COLUMNS = ["utterance_id", "wav_path", "text", "label"]  # an input row (label: None if unknown)
BLOCK = 4 * BATCH  # rows per Ray Data block: the actors share the blocks; batches stay aligned


@dataclass
class Inputs:
    rows: pd.DataFrame  # utterance_id, wav_path, sample_rate, text, label (None: unknown)
    skipped: list[str] = field(default_factory=list)  # what --skip-bad left out, and why

    @property
    def labelled(self) -> bool:
        return bool(self.rows.label.notna().all()) and not self.rows.empty


def _labelled(
    root: Path, classes: tuple[str, ...], class_spec: str | None
) -> tuple[pd.DataFrame, CorpusReport]:
    """A corpus folder's manifest and report, as `tune` and `train` read them (an IEMOCAP release
    or a folder with a metadata.csv), its labels mapped to the model's classes (or by
    `class_spec`)."""
    if metadata_file(root):
        parsed = read_audiofolder(root, class_spec or ",".join(classes), folds=None, seed=0)
        return parsed.manifest, parsed.report
    default = (
        DEFAULT_CLASSES
        if classes == DEFAULT_CLASSES.names
        else ClassMap(tuple((name, (name,)) for name in classes))
    )
    return read_iemocap(root, ClassMap.parse(class_spec) if class_spec else default)


def read_inputs(
    classes: tuple[str, ...],
    class_spec: str | None = None,
    data_dir: str | None = None,
    csv: str | None = None,
    wav: str | None = None,
    text: str | None = None,
    skip_bad: bool = False,
) -> Inputs:
    """The utterances to predict, from exactly one source. A missing or unreadable audio file,
    an empty text or a label outside `classes` is an InputError naming it, or with `skip_bad` a
    reported skip."""
    if data_dir:
        manifest, report = _labelled(Path(data_dir).expanduser().resolve(), classes, class_spec)
        problems = report.problems()
        bad = [f"{kind}: {item}" for kind, items in problems.items() for item in items]
        rows = manifest[["utterance_id", "wav_path", "text", "label"]]
    elif csv:
        rows, bad = _csv_rows(Path(csv))
    else:
        rows, bad = pd.DataFrame([(Path(wav).name, wav, text, None)], columns=COLUMNS), []
        bad = [] if (text or "").strip() else [f"{wav}: empty text (--text)"]
    rows, unreadable = _with_rates(rows)
    bad += unreadable
    if unknown := sorted(set(rows.label.dropna()) - set(classes)):
        bad.append(f"labels {unknown} are not among the model's classes {list(classes)}")
        rows = rows[rows.label.isna() | rows.label.isin(classes)]
    if bad and not skip_bad:
        raise InputError(f"{len(bad)} bad input(s) (--skip-bad leaves them out): {bad[0]}")
    return Inputs(rows.reset_index(drop=True), bad)


def _csv_rows(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The rows of a `path,text[,label]` CSV (paths relative to its folder), and its bad lines."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it as CSV ({err})") from None
    if missing := {"path", "text"} - set(table.columns):
        raise InputError(f"{path}: no column {sorted(missing)[0]!r} (expected path,text[,label])")
    rows, bad = [], []
    for line, row in enumerate(table.itertuples(index=False), 2):
        if not row.text.strip():
            bad.append(f"{path}:{line}: {row.path}: empty text")
            continue
        label = getattr(row, "label", "") or None
        rows.append((row.path, str(path.parent / row.path), row.text.strip(), label))
    return pd.DataFrame(rows, columns=COLUMNS), bad


def _with_rates(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows whose audio reads, with its sample rate; the others, named."""
    infos = [wav_info(Path(p)) if Path(p).is_file() else None for p in rows.wav_path]
    bad = [
        f"{p}: {'unreadable audio' if Path(p).is_file() else 'no such file'}"
        for p, info in zip(rows.wav_path, infos)
        if info is None
    ]
    kept = rows[[info is not None for info in infos]].copy()
    kept["sample_rate"] = [info[1] for info in infos if info is not None]
    return kept, bad


@dataclass(frozen=True)
class Recording:
    """One utterance to predict: an audio file's bytes (any format soundfile reads), the rate
    it was recorded at, its transcript."""

    utterance_id: str
    audio: bytes
    sample_rate: int
    text: str


def recording_rows(recordings: list[Recording]) -> dict[str, np.ndarray]:
    """Recordings as shards hold them, what `Classifier.predict_rows` takes: the audio file's
    bytes (down-mixed to mono where it is not, as the shards' `audio_cell`), its rate, the
    text."""

    def column(values: list) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return {
        "utterance_id": column([r.utterance_id for r in recordings]),
        "audio": column(
            [encoded_cell(r.audio, r.sample_rate, "wav", None, r.utterance_id) for r in recordings]
        ),
        "audio_format": np.full(len(recordings), "wav", dtype=object),
        "sample_rate": np.array([r.sample_rate for r in recordings], dtype=np.int64),
        "text": column([r.text for r in recordings]),
    }


def audio_rows(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows of `read_inputs` as shards hold them: `recording_rows` of each audio file's bytes."""
    return recording_rows(
        [
            Recording(r.utterance_id, _file_bytes(r.wav_path), int(r.sample_rate), r.text)
            for r in rows.itertuples()
        ]
    )


def _file_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err})") from None


class _Predictor:
    """A Ray Data actor: one model, loaded once, predicting batch after batch."""

    def __init__(self, model_dir: str):
        self.classifier = load_classifier(model_dir)

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        probs = self.classifier.predict_rows(audio_rows(batch))
        return {"utterance_id": batch.utterance_id.to_numpy(), "probs": list(probs)}


def _probs_on_ray(
    model_dir: str, rows: pd.DataFrame, actors: int, gpus: bool, address: str | None
) -> np.ndarray:
    """Every row's probabilities through Ray Data, `actors` models side by side, in row order,
    on the Ray at `address` (or the one running here, joined; else a local one, started)."""
    import ray.data

    from turbo_ray.data.pipeline import configure_ray_data
    from turbo_ray.runtime import init_ray

    init_ray(address)
    configure_ray_data()
    ray.data.DataContext.get_current().enable_progress_bars = True
    blocks = [rows.iloc[i : i + BLOCK] for i in range(0, len(rows), BLOCK)]  # for the actors
    result = (
        ray.data.from_pandas(blocks)
        .map_batches(
            _Predictor,
            fn_constructor_kwargs={"model_dir": model_dir},
            batch_size=BATCH,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
        )
        .to_pandas()
    )
    if result.utterance_id.tolist() != rows.utterance_id.tolist():
        raise RuntimeError("Ray Data returned the predictions out of order")
    return np.stack(result.probs.to_numpy())


def predict(
    model_dir: str, inputs: Inputs, actors: int | None = None, address: str | None = None
) -> pd.DataFrame:
    """utterance_id, predicted, prob_<class> per class (and label, where known), in input
    order. `actors`: 0 predicts in this process, N through Ray Data with N actors (default: in
    process up to `IN_PROCESS_MAX` utterances, else one actor per CPU, or per GPU), on the Ray
    cluster at `address` if given."""
    classifier = load_classifier(model_dir)
    rows = inputs.rows
    if actors is None:
        actors = 0 if len(rows) <= IN_PROCESS_MAX else _default_actors(classifier)
    if actors == 0:
        probs = classifier.predict_rows(audio_rows(rows))
    else:
        gpus = classifier.device.type == "cuda"
        probs = _probs_on_ray(model_dir, rows, actors, gpus, address)
    table = pd.DataFrame({"utterance_id": rows.utterance_id})
    table["predicted"] = [classifier.classes[i] for i in probs.argmax(1)]
    for k, name in enumerate(classifier.classes):
        table[f"prob_{name}"] = probs[:, k].round(6)
    if inputs.labelled:
        table["label"] = rows.label.to_numpy()
    return table


def write_predictions(table: pd.DataFrame, out: Path) -> Path:
    """`table` as the CSV `out`, whole or not at all (written beside it, then renamed)."""
    partial = out.with_name(f".{out.name}.partial")
    table.to_csv(partial, index=False)
    partial.rename(out)
    return out


def _default_actors(classifier: Classifier) -> int:
    import torch

    gpus = torch.cuda.device_count() if classifier.device.type == "cuda" else 0
    return max(1, gpus or min(os.cpu_count() or 1, 8))


def format_scores(table: pd.DataFrame, classifier: Classifier) -> str:
    """The scores of labelled predictions and their confusion matrix, as printed."""
    score = scores(table, classifier)
    names = ", ".join(f"{k.upper()} {100 * v:.2f}" for k, v in score.items() if k != "confusion")
    classes = list(classifier.classes)
    confusion = pd.DataFrame(score["confusion"], classes, classes).to_string()
    return f"{names} (in %)\nconfusion (rows: label, columns: predicted):\n{confusion}"


def scores(table: pd.DataFrame, classifier: Classifier) -> dict:
    """WA, UA, macro-F1 (and ROC-AUC for two classes) and the confusion matrix of labelled
    predictions."""
    classes = list(classifier.classes)
    y_true = table.label.map(classes.index).to_numpy()
    y_pred = table.predicted.map(classes.index).to_numpy()
    probs = table[[f"prob_{c}" for c in classes]].to_numpy()
    positive = positive_index(classes, classifier.cfg.data.positive_class)
    report = classification_report(y_true, y_pred, len(classes), probs, positive)
    return report | {"confusion": confusion_matrix(y_true, y_pred, len(classes)).tolist()}
