"""Using a model: a checkpoint exported to a self-contained folder, loaded offline without Ray,
predicting new recordings in process and through Ray Data; the final model of the main job; bad
inputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from conftest import MAIN_JOB_START, run_main

from turbo_ray.classifier import load_classifier
from turbo_ray.cli import main

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def exported(main_job, tmp_path_factory):
    """The main job's fold-1 tested checkpoint, exported: (its results row, the model folder)."""
    out, _, _ = main_job
    row = json.loads((out / "results.json").read_text())["folds"][0]
    model = tmp_path_factory.mktemp("exported") / "model"
    row["checkpoint"] = str(out / row["checkpoint"])  # results.json: relative to the job folder
    assert main(["export", row["checkpoint"], str(model)]) == 0
    return row, model


OFFLINE = """
import json, sys
from turbo_ray import load_classifier
from turbo_ray.predict import predict, read_inputs, scores
classifier = load_classifier(sys.argv[1])
inputs = read_inputs(classifier.classes, classifier.cfg.data.classes, data_dir=sys.argv[2])
inputs.rows = inputs.rows[inputs.rows.utterance_id.str.startswith("Ses01")]
table = predict(sys.argv[1], inputs, actors=0)
print(json.dumps({"ray": "ray" in sys.modules, **scores(table, classifier)}))
"""


def test_an_exported_model_predicts_offline_without_ray_as_the_jobs_test_pass(
    exported, demo_corpus, tmp_path
):
    row, model = exported
    meta = json.loads((model / "turbo_ray.json").read_text())
    assert meta["classes"] == list(demo_corpus.classes)
    assert meta["source"]["epoch"] == row["best_epoch"]
    assert sorted(p.name for p in model.iterdir()) == [
        "audio_encoder",
        "model.safetensors",
        "text_encoder",
        "turbo_ray.json",
    ]
    assert (model / "text_encoder" / "tokenizer_config.json").is_file()
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env |= {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}  # this checkout
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE, str(model), str(demo_corpus.root)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: nothing of the run folder or the hub
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    offline = json.loads(done.stdout.splitlines()[-1])
    assert offline["ray"] is False
    assert offline["confusion"] == row["confusion"]  # the same predictions, fold 1's test set
    assert offline["wa"] == pytest.approx(row["wa"]) and offline["ua"] == pytest.approx(row["ua"])


def test_predict_through_ray_data_gives_the_in_process_predictions(
    exported, demo_corpus, tmp_path, capsys
):
    _, model = exported
    args = ["predict", str(model), "--data-dir", str(demo_corpus.root)]
    assert main([*args, "--actors", "0", "--out", str(tmp_path / "here.csv")]) == 0
    printed = capsys.readouterr().out
    assert "WA " in printed and "confusion (rows: label, columns: predicted)" in printed
    assert main([*args, "--actors", "2", "--out", str(tmp_path / "ray.csv")]) == 0
    here, on_ray = (pd.read_csv(tmp_path / name) for name in ("here.csv", "ray.csv"))
    assert len(here) == len(demo_corpus.manifest)
    assert list(here.columns) == [
        "utterance_id",
        "predicted",
        *(f"prob_{c}" for c in demo_corpus.classes),
        "label",
    ]
    pd.testing.assert_frame_equal(here, on_ray, atol=2e-6, rtol=0)
    assert (here.predicted == on_ray.predicted).all()


def test_bad_inputs_are_one_line_or_reported_skips_and_nothing_half_written(
    exported, demo_corpus, tmp_path, capsys
):
    row, model = exported
    wavs = demo_corpus.manifest.wav_path.tolist()
    mono, rate = sf.read(wavs[0])
    sf.write(tmp_path / "stereo-8k.wav", np.stack([mono[::2], mono[::2]], 1), rate // 2)
    (tmp_path / "broken.wav").write_text("not audio")
    csv = tmp_path / "new.csv"
    csv.write_text(
        f"path,text\n{wavs[0]},hello there\nstereo-8k.wav,and a stereo one\n"
        f"missing.wav,nobody\nbroken.wav,garbage\n{wavs[1]},\n"
    )
    out = tmp_path / "predictions.csv"
    files = sorted(tmp_path.iterdir())
    assert main(["predict", str(model), "--csv", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 bad input(s)" in err and f"{csv}:6:" in err
    assert sorted(tmp_path.iterdir()) == files  # nothing written, not even in part
    assert main(["predict", str(model), "--csv", str(csv), "--out", str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "no such file" in printed and "unreadable audio" in printed and "empty text" in printed
    table = pd.read_csv(out)
    assert table.utterance_id.tolist() == [wavs[0], "stereo-8k.wav"]  # 8 kHz stereo: resampled
    assert np.allclose(table.filter(like="prob_").sum(axis=1), 1, atol=1e-5)
    # one recording, its prediction where --out says (never in the working directory)
    one = tmp_path / "one.csv"
    assert main(["predict", str(model), "--wav", wavs[0], "--text", "hi", "--out", str(one)]) == 0
    assert pd.read_csv(one).utterance_id.tolist() == [Path(wavs[0]).name]
    # a folder of the previous format (its weights in model.pt) still loads, to the same answers
    meta = json.loads((model / "turbo_ray.json").read_text())
    first = tmp_path / "format-1"
    shutil.copytree(model, first)
    (first / "model.safetensors").unlink()
    torch.save(load_classifier(model).model.state_dict(), first / "model.pt")
    (first / "turbo_ray.json").write_text(json.dumps(meta | {"format": 1}))
    again = tmp_path / "again.csv"
    assert main(["predict", str(first), "--wav", wavs[0], "--text", "hi", "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again), pd.read_csv(one), rtol=0, atol=1e-6)
    # a folder of another format
    old = tmp_path / "old-model"
    old.mkdir()
    (old / "turbo_ray.json").write_text(json.dumps(meta | {"format": 99}))
    assert main(["predict", str(old), "--wav", wavs[0], "--text", "hi"]) == 2
    assert "model folder format 99" in capsys.readouterr().err
    assert main(["export", row["checkpoint"], str(model)]) == 2  # exists: never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "m")]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err


def test_the_main_job_searches_and_exports_a_final_model(main_job):
    out, printed, _ = main_job
    assert "and a final search on all of the corpus" in printed
    assert f"final model: {out / 'model'}" in printed
    results = json.loads((out / "results.json").read_text())
    assert [f["test_session"] for f in results["folds"]] == [1, 2]  # the final model is untested
    selected = (out / "best_config_turbo-seed0-s0.yaml").read_text()
    meta = json.loads((out / "model" / "turbo_ray.json").read_text())
    assert meta["config"] == yaml.safe_load(selected)  # the final search's selected config
    seen = (out / "search").glob("trial-*/utterances.json")
    utterances = [json.loads(p.read_text()) for p in seen]
    finals = [u for u in utterances if u["fold"] == 0]
    assert len(finals) == 2  # the final search had the budget of the others
    for final in finals:
        assert {u[:5] for u in final["train"] + final["val"]} == {f"Ses0{k}" for k in range(1, 6)}


def history(trial: Path) -> list[dict]:
    """What Tune recorded of a trial, epoch by epoch."""
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]


def test_a_named_config_trains_on_all_of_the_corpus_as_the_final_search_did_and_is_exported(
    main_job, tmp_path
):
    # the config of the main job's final search's first trial, named: `turbo-ray train --final`
    # (after its one fold's table) trains it on all of the corpus with a one-worker TorchTrainer
    # (new processes), which must
    # give what that trial gave, epoch for epoch, in the process Tune reused from an earlier trial
    # (both runners share one loop; a reused process starts from the seeds a new one does)
    job, _, overrides = main_job
    trials = {p.parent: json.loads(p.read_text()) for p in job.glob("search/trial-*/params.json")}
    (trial,) = [
        t for t, params in trials.items() if (params["fold"], params["fold_trial"]) == (0, 0)
    ]
    runs = {t: history(t) for t in trials}
    started = runs[trial][0]["timestamp"]
    ended = {r[0]["pid"] for t, r in runs.items() if t != trial and r[-1]["timestamp"] <= started}
    assert runs[trial][0]["pid"] in ended, "Tune did not reuse an earlier trial's process"
    chosen = {}
    for key, value in MAIN_JOB_START.items():
        section, name = key.split(".")
        chosen.setdefault(section, {})[name] = value
    named = tmp_path / "chosen.yaml"
    named.write_text(yaml.safe_dump(chosen))
    out = tmp_path / "final"
    run_main(
        "train",
        "--final",
        "--fold",
        "1",
        "--config",
        str(named),
        "--output-dir",
        str(out),
        *overrides,
    )
    meta = json.loads((out / "model" / "turbo_ray.json").read_text())
    assert {s: {k: meta["config"][s][k] for k in keys} for s, keys in chosen.items()} == chosen
    given = yaml.safe_load((out / "config.yaml").read_text())
    for config in (given, meta["config"]):
        config["train"].pop("storage_path")  # the run's checkpoints went to its folder
    assert meta["config"] == given
    (recorded,) = [r for r in runs[trial] if r["epoch"] == meta["source"]["epoch"]]
    trained = {
        k: v for k, v in meta["source"]["metrics"].items() if k.startswith(("train_", "val_"))
    }
    assert trained and trained == {k: recorded[k] for k in trained}
    # nothing left of the final run's checkpoints but their records: the weights are in the folder
    assert list(out.glob("checkpoints/*-s0/checkpoint_*"))
    assert not list(out.glob("checkpoints/*-s0/checkpoint_*/model.pt"))
    assert len(pd.read_csv(out / "results.csv").query("test_session == '1'")) == 1  # its fold


@pytest.mark.parametrize("modalities", ["audio", "text", "audio+text"])
def test_a_model_of_any_modalities_exports_and_predicts(modalities, demo_corpus, tmp_path):
    from turbo_ray.classifier import write_model_folder
    from turbo_ray.config import load_config
    from turbo_ray.model.turbo import build_model

    mode = "turbo" if modalities == "audio+text" else "baseline"  # one modality: no views to pair
    cfg = load_config(None, [f"model.modalities={modalities}", f"loss.mode={mode}"])
    classes = list(demo_corpus.classes)
    model = tmp_path / "model"
    write_model_folder(build_model(cfg, len(classes)), cfg, classes, model, source={})
    assert json.loads((model / "turbo_ray.json").read_text())["precision"] == "auto"
    wav = demo_corpus.manifest.wav_path.iloc[0]
    out = tmp_path / "one.csv"
    assert main(["predict", str(model), "--wav", wav, "--text", "hello", "--out", str(out)]) == 0
    probs = pd.read_csv(out).filter(like="prob_")
    assert list(probs.columns) == [f"prob_{c}" for c in classes]
    assert probs.sum(axis=1).tolist() == pytest.approx([1.0], abs=1e-5)
