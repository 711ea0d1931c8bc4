"""Your own corpus: a folder of audio files with a metadata.csv (the `audiofolder` layout), read,
reported by line, cut into outer folds by group or by a given split, and run end to end."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from turbo_ray.cli import main
from turbo_ray.config import load_config
from turbo_ray.data.audiofolder import read_audiofolder
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.data.demo_speech import SAMPLE_RATE, STYLES, synthesise
from turbo_ray.data.folds import group_folds
from turbo_ray.data.shards import resample

GROUPS = ("car", "kitchen", "office")
COMMANDS = ("turn the lights on", "play some music", "set a timer", "what is the weather")
CHATTER = ("I think so too", "did you see that game", "we should leave soon", "pass me the salt")


def write_corpus(root, per_speaker: int = 8, seed: int = 0) -> pd.DataFrame:
    """A device-directed-speech-like corpus: 3 groups (rooms) of 2 speakers; half the utterances
    speak to the device ("hey computer …", louder and higher), half are chatter. Audio at 16, 8
    and 22.05 kHz, one file in stereo. Returns its metadata."""
    rng = np.random.default_rng(seed)
    rows = []
    for g, group in enumerate(GROUPS):
        for s in range(2):
            speaker, f0 = f"{group}-{s}", 110.0 + 90.0 * s
            for i in range(per_speaker):
                directed = i % 2 == 0
                text = f"hey computer {COMMANDS[i // 2 % 4]}" if directed else CHATTER[i // 2 % 4]
                wave = synthesise(text, STYLES["ang" if directed else "neu"], f0, rng)
                wave = wave.astype(np.float32)
                rate = (SAMPLE_RATE, 8_000, 22_050)[(g + i) % 3]
                if rate != SAMPLE_RATE:
                    wave = resample(wave, SAMPLE_RATE, rate)
                name = f"clips/{speaker}-{i:02d}.wav"
                (root / "clips").mkdir(parents=True, exist_ok=True)
                sf.write(root / name, wave, rate)
                label = "directed" if directed else "other"
                rows.append((name, text, label, speaker, group))
    stereo = rows[1][0]
    mono, rate = sf.read(root / stereo)
    sf.write(root / stereo, np.stack([mono, 0.5 * mono], axis=1), rate)
    metadata = pd.DataFrame(rows, columns=["file_name", "text", "label", "speaker", "group"])
    metadata.to_csv(root / "metadata.csv", index=False)
    return metadata


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dds")
    write_corpus(root)
    return root


def test_a_metadata_csv_corpus_reads_with_its_classes_groups_and_rates(corpus_dir, tmp_path):
    cfg = load_config(None, [f"data.data_dir={corpus_dir}", f"data.cache_dir={tmp_path}"])
    corpus = prepare_corpus(cfg.data)
    assert corpus.classes == ("directed", "other")  # from the data, sorted
    assert corpus.outer.kind == "logo"
    assert corpus.outer.groups == {1: ["car"], 2: ["kitchen"], 3: ["office"]}
    assert sorted(corpus.manifest.sample_rate.unique()) == [8_000, 16_000, 22_050]
    assert corpus.report.downmixed == ["clips/car-0-01.wav"] and not corpus.report.problems()
    summary = corpus.summary()
    assert "48 utterances in 2 classes (directed 24, other 24)" in summary
    assert "outer folds: leave-one-group-out (3)" in summary
    # each fold tests one group; its validation speakers are whole speakers of the others
    folds = corpus.folds(cfg.data)
    assert [fold.number for fold in folds] == [1, 2, 3]
    for fold in folds:
        group = GROUPS[fold.number - 1]
        assert set(fold.test.group) == {group} and group not in set(fold.train.group)
        assert not set(fold.val.speaker) & set(fold.train.speaker)
    # merged and selected classes: the labels of each class, in the order given
    merged, _, classes, _ = read_audiofolder(corpus_dir, "yes=directed,no=other", None, 0)
    assert classes.names == ("yes", "no") and not merged.attrs
    assert set(zip(merged.label, merged.label_raw)) == {("yes", "directed"), ("no", "other")}


def test_group_k_fold_deals_whole_groups_seeded_and_balanced():
    groups = pd.Series([g for g, n in zip("abcdefg", (9, 7, 5, 5, 3, 2, 1)) for _ in range(n)])
    folds, members = group_folds(groups, 3, seed=0)
    assert sorted(g for names in members.values() for g in names) == list("abcdefg")
    sizes = pd.Series(folds).value_counts()
    assert sizes.max() - sizes.min() <= 2  # 32 rows in three folds of 10 or 11
    for k, names in members.items():
        assert set(groups[folds == k]) == set(names)  # whole groups
    again, _ = group_folds(groups, 3, seed=0)
    assert (again == folds).all()
    with pytest.raises(ValueError, match="data.folds=8 needs at least 8 groups, got 7"):
        group_folds(groups, 8, seed=0)


BAD_ROWS = [
    ("clips/car-0-00.wav,hey computer,directed,car-0,car", None),  # fine
    ("clips/missing.wav,hello,other,car-0,car", "missing_audio: 1\n    {csv}:3: clips/missing.wav"),
    ("clips/car-0-02.wav,,directed,car-0,car", "missing_transcription: 1\n    {csv}:4:"),
    ("clips/car-0-03.wav,hi,maybe,car-0,car", "{csv}:5: label 'maybe' is in no class"),
    ("clips/car-0-04.wav,hi,other,car-0", "{csv}:6: 4 fields, not 5"),
    ("clips/car-0-05.wav,hi,other,car-0,car", "{csv}:7: clips/car-0-05.wav again at 8"),
    ("clips/car-0-05.wav,hi again,other,car-0,car", None),
    ("clips/not-audio.wav,hi,other,car-0,car", "unreadable_wav: 1\n    {csv}:9: clips/not-audio"),
    ("clips/car-0-06.wav,hi,other,,car", "{csv}:10: empty speaker"),
    ("clips/office-0-00.wav,hey computer,directed,office-0,office", None),  # fine
]


def test_bad_rows_are_named_by_their_line_and_strict_refuses_before_writing(corpus_dir, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(corpus_dir / "clips", root / "clips")
    (root / "clips" / "not-audio.wav").write_text("not a wav")
    header = "file_name,text,label,speaker,group"
    csv = root / "metadata.csv"
    csv.write_text("\n".join([header, *(row for row, _ in BAD_ROWS)]) + "\n")
    manifest, report, *_ = read_audiofolder(root, "directed,other", None, 0)
    summary = report.summary()
    for _, expected in BAD_ROWS:
        if expected:
            assert expected.format(csv=csv) in summary
    good = ["clips/car-0-00.wav", "clips/office-0-00.wav"]
    assert manifest.utterance_id.tolist() == good  # only the good rows
    cache = tmp_path / "cache"
    args = [
        "prepare",
        "--data-dir",
        str(root),
        f"data.cache_dir={cache}",
        "data.classes=directed,other",
    ]
    assert main([*args, "--strict"]) == 2
    assert not (cache / "shards").exists()  # nothing written


def test_a_manifest_without_group_or_split_is_one_line(tmp_path, capsys):
    (tmp_path / "metadata.csv").write_text("file_name,text,label\na.wav,hi,x\n")
    assert main(["prepare", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a `group` column" in err


@pytest.fixture(scope="module")
def split_dir(corpus_dir, tmp_path_factory):
    """The same recordings with a split column instead of groups: office is the test set,
    kitchen validation, car training."""
    root = tmp_path_factory.mktemp("dds-split")
    metadata = pd.read_csv(corpus_dir / "metadata.csv")
    metadata["file_name"] = [str(corpus_dir / name) for name in metadata.file_name]
    splits = {"car": "train", "kitchen": "validation", "office": "test"}
    metadata["split"] = metadata.pop("group").map(splits)
    metadata.to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def speakers_dir(corpus_dir, tmp_path_factory):
    """The same recordings grouped by speaker: six groups, more than IEMOCAP's five sessions."""
    root = tmp_path_factory.mktemp("dds-speakers")
    metadata = pd.read_csv(corpus_dir / "metadata.csv")
    metadata["file_name"] = [str(corpus_dir / name) for name in metadata.file_name]
    metadata["group"] = metadata.speaker
    metadata.to_csv(root / "metadata.csv", index=False)
    return root


def test_the_main_job_runs_on_groups_and_on_a_given_split(
    shared_ray, speakers_dir, split_dir, tiny, tmp_path, capsys
):
    job = ["tune", "--num-samples", "1", "--max-concurrent-trials", "2", *tiny, "train.epochs=1"]
    grouped = tmp_path / "grouped"
    assert main([*job, "--data-dir", str(speakers_dir), "--output-dir", str(grouped)]) == 0
    printed = capsys.readouterr().out
    assert "Nested leave-one-group-out (nested-logo):" in printed  # every fold: no "k of its n"
    assert "AUC = ROC-AUC of the positive class" in printed
    results = json.loads((grouped / "results.json").read_text())
    assert results["protocol"] == "nested-logo"
    speakers = [f"{group}-{s}" for group in GROUPS for s in (0, 1)]
    assert results["outer_folds"]["groups"] == {str(k): [g] for k, g in enumerate(speakers, 1)}
    assert results["outer_folds"]["run"] == [1, 2, 3, 4, 5, 6]  # all six groups, not five
    assert results["classes"] == ["directed", "other"]
    assert [fold["test_session"] for fold in results["folds"]] == [1, 2, 3, 4, 5, 6]
    for fold in results["folds"]:
        assert 0.0 <= fold["auc"] <= 1.0 and len(fold["confusion"]) == 2
        assert fold["search_sessions"] == [k for k in range(1, 7) if k != fold["test_session"]]
    table = pd.read_csv(grouped / "results.csv")
    assert "auc" in table and table.test_session.tolist()[-2:] == ["mean", "std"]

    split = tmp_path / "split"
    assert main([*job, "--data-dir", str(split_dir), "--output-dir", str(split)]) == 0
    printed = capsys.readouterr().out
    assert "Nested train/validation/test split (nested-split)" in printed
    results = json.loads((split / "results.json").read_text())
    (fold,) = results["folds"]
    assert fold["n_test"] == 16  # the office recordings
    assert fold["search_splits"] == ["train", "validation"] and "search_sessions" not in fold
    ids = json.loads(next((split / "search").glob("trial-*/utterances.json")).read_text())
    kitchen = {
        name for name in pd.read_csv(split_dir / "metadata.csv").file_name if "kitchen" in name
    }
    assert set(ids["val"]) == kitchen  # validation as given


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.classes=directed,nothing"], "label 'other' is in no class of directed,nothing"),
        (["data.positive_class=maybe"], "data.positive_class 'maybe' must be one of a two-class"),
        (["data.folds=4"], "data.folds=4 needs at least 4 groups, got 3"),
    ],
)
def test_what_the_data_cannot_do_is_one_line(corpus_dir, tmp_path, capsys, overrides, message):
    args = ["prepare", "--strict", "--data-dir", str(corpus_dir), f"data.cache_dir={tmp_path}"]
    assert main([*args, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_predict_reads_a_metadata_csv_folder_as_tune_does(corpus_dir, tmp_path, capsys):
    from turbo_ray.classifier import write_model_folder
    from turbo_ray.model.turbo import build_model

    cfg = load_config(None, [])
    model = tmp_path / "model"
    write_model_folder(build_model(cfg, 2), cfg, ["directed", "other"], model, source={})
    out = tmp_path / "scored.csv"
    assert main(["predict", str(model), "--data-dir", str(corpus_dir), "--out", str(out)]) == 0
    assert "confusion (rows: label, columns: predicted)" in capsys.readouterr().out
    table = pd.read_csv(out)
    metadata = pd.read_csv(corpus_dir / "metadata.csv")
    assert sorted(table.utterance_id) == sorted(metadata.file_name)  # every row, scored
    assert (table.set_index("utterance_id").label == metadata.set_index("file_name").label).all()


def test_classes_come_from_the_usable_rows_and_an_empty_one_is_named(corpus_dir, tmp_path):
    root = tmp_path / "maybe"
    shutil.copytree(corpus_dir / "clips", root / "clips")
    metadata = pd.read_csv(corpus_dir / "metadata.csv")
    lost = pd.DataFrame(  # a third label whose every file is missing
        [("clips/gone-0.wav", "hm", "maybe", "car-0", "car")], columns=metadata.columns
    )
    pd.concat([metadata, lost]).to_csv(root / "metadata.csv", index=False)
    manifest, report, classes, _ = read_audiofolder(root, None, None, 0)
    assert classes.names == ("directed", "other")  # no dead output
    assert (manifest.label_id == manifest.label.map({"directed": 0, "other": 1})).all()
    summary = report.summary()
    assert "empty_class: 1" in summary and "class 'maybe': none of its rows is usable" in summary


def test_a_label_typo_is_named_with_its_line_and_strict_refuses_it(corpus_dir, tmp_path):
    root = tmp_path / "typo"
    shutil.copytree(corpus_dir / "clips", root / "clips")
    shutil.copy(root / "clips/car-0-00.wav", root / "clips/car-0-99.wav")
    metadata = pd.read_csv(corpus_dir / "metadata.csv")
    typo = pd.DataFrame(
        [("clips/car-0-99.wav", "hey computer", "direced", "car-0", "car")],
        columns=metadata.columns,
    )
    pd.concat([metadata, typo]).to_csv(root / "metadata.csv", index=False)
    summary = read_audiofolder(root, None, None, 0).report.summary()
    csv = root / "metadata.csv"
    assert (
        f"class 'direced': 1 utterance(s) against 24 of 'directed' (a typo?): {csv}:50" in summary
    )
    # only the car group has it: the fold that tests car cannot train on it
    assert "fold 1 (tests car): no 'direced' utterance to train on" in summary
    assert "classes a fold cannot test (not a problem): fold 2 (tests kitchen): no 'direced'" in (
        summary
    )
    assert main(["prepare", "--data-dir", str(root), f"data.cache_dir={tmp_path}", "--strict"]) == 2
