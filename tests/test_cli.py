"""`turbo-ray train` / `tune` refuse what a user can get wrong before Ray starts: one line, exit
code 2."""

import pytest
import ray
from test_iemocap import odd_tree

from turbo_ray.cli import main


@pytest.fixture(autouse=True)
def no_ray_running():
    """Each command here must fail before starting Ray: none may run beforehand (another test's)."""
    ray.shutdown()


def run(capsys, *args: str) -> str:
    """The command's exit code must be 2 and Ray must not have started; returns its one-line
    error."""
    assert main(list(args)) == 2
    assert not ray.is_initialized()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def iemocap_without_utterances(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    for session in range(1, 6):
        (root / f"Session{session}" / "dialog" / "EmoEvaluation").mkdir(parents=True)
    return root


@pytest.mark.parametrize("job", ["train", "tune"])
def test_a_folder_that_is_not_iemocap(tmp_path, capsys, job):
    (tmp_path / "photos").mkdir()
    err = run(
        capsys, job, "--data-dir", str(tmp_path / "photos"), "--output-dir", str(tmp_path / "out")
    )
    assert f"{tmp_path / 'photos'} is not an IEMOCAP_full_release folder" in err
    assert not (tmp_path / "out").exists()


def test_an_empty_corpus(tmp_path, capsys, iemocap_without_utterances):
    err = run(
        capsys,
        "train",
        "--data-dir",
        str(iemocap_without_utterances),
        "--output-dir",
        str(tmp_path / "out"),
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    classes = "neutral,happy=happy+excited,angry,sad"  # data.classes unset: IEMOCAP's 4class
    assert f"{iemocap_without_utterances}: no usable utterance in the classes {classes}" in err
    assert not (tmp_path / "out").exists()


def test_resume_of_a_folder_without_an_experiment(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run(capsys, "tune", "--resume", "--output-dir", str(tmp_path / "empty"))
    assert f"--resume: {tmp_path / 'empty'} holds no experiment" in err


@pytest.mark.parametrize("job", ["train", "tune"])
def test_an_output_folder_holding_another_experiment_is_left_untouched(tmp_path, capsys, job):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("train: {epochs: 7}\n")
    err = run(capsys, job, "--output-dir", str(out), "train.epochs=1")
    assert f"{out} already holds an experiment" in err
    assert (out / "config.yaml").read_text() == "train: {epochs: 7}\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
        (["--mode", "base,turbo"], "--mode ['base'] not in"),
    ],
)
def test_train_flags_that_cannot_run(tmp_path, capsys, flags, message):
    err = run(capsys, "train", *flags, "--output-dir", str(tmp_path / "out"))
    assert message in err
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = run(capsys, "train", "--output-dir", str(tmp_path / "file"))
    assert f"--output-dir {tmp_path / 'file'} is a file" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.grad_accum=0", "train.grad_accum must be >= 1"),
        ("train.epochs=-1", "train.epochs must be >= 1"),
        ("train.precision=fp16", "train.precision must be one of"),
        ("tune.metric=test_ua", "tune.metric must be one of"),
    ],
)
@pytest.mark.parametrize("job", ["train", "tune"])
def test_config_values_that_cannot_train(tmp_path, capsys, job, override, message):
    err = run(capsys, job, "--output-dir", str(tmp_path / "out"), override)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_prepare_strict_on_a_corpus_with_problems(tmp_path, capsys):
    release = odd_tree(tmp_path)
    missing = release / "Session1/sentences/wav/Ses01M_impro05a/Ses01M_impro05a_M000.wav"
    missing.unlink()  # a label without its wav
    shards = tmp_path / "shards"
    err = run(capsys, "prepare", "--strict", "--data-dir", str(release), "--out", str(shards))
    assert "Ses01M_impro05a_M000" in err
    assert not shards.exists()  # nothing written
