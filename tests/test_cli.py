"""`turbo-ray train` / `tune` refuse what a user can get wrong before Ray starts: one line, exit
code 2. Their shared flags set the same config keys, a flag name means one thing in every
subcommand, and the help texts show the config's defaults."""

import pytest
import ray
import yaml
from test_iemocap import odd_tree

from turbo_ray.cli import build_parser, main
from turbo_ray.cli.args import CONFIG_FLAGS, config_from_args
from turbo_ray.config import Config


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
        (["--modes", "base,turbo"], "tune.modes: 'base' is not one of baseline, in, cross, turbo"),
        (["--folds", "0"], "tune.folds must be >= 1"),
    ],
)
@pytest.mark.parametrize("job", ["train", "tune"])
def test_job_flags_that_cannot_run(tmp_path, capsys, job, flags, message):
    err = run(capsys, job, *flags, "--output-dir", str(tmp_path / "out"))
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
    err = run(
        capsys, "prepare", "--strict", "--data-dir", str(release), "--shards-dir", str(shards)
    )
    assert "Ses01M_impro05a_M000" in err
    assert not shards.exists()  # nothing written


def parsed(*argv: str) -> Config:
    """The config a command line resolves to (nothing runs)."""
    return config_from_args(build_parser().parse_args(list(argv)))


SHARED = {  # a flag of both jobs → (its argument, the config key it sets, the value it sets)
    "--data-dir": ("corpus: a#b", "data.data_dir", "corpus: a#b"),  # read as given, not as YAML
    "--preset": ("base", "model.preset", "base"),
    "--num-workers": ("3", "train.num_workers", 3),
    "--gpus-per-worker": ("0.5", "train.gpus_per_worker", 0.5),
    "--modes": ("baseline,turbo", "tune.modes", ["baseline", "turbo"]),
    "--seeds": ("0,1,2", "tune.seeds", [0, 1, 2]),
    "--folds": ("2", "tune.folds", 2),
    "--final": (None, "tune.final", True),
}


def value(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("job", ["train", "tune"])
def test_train_and_tune_set_the_same_config_keys_from_the_same_flags(job):
    argv = [a for flag, (arg, _, _) in SHARED.items() for a in (flag, arg) if a is not None]
    cfg = parsed(job, *argv)
    assert {key: value(cfg, key) for _, key, _ in SHARED.values()} == {
        key: expected for _, key, expected in SHARED.values()
    }
    assert cfg.train.use_gpu  # implied by --gpus-per-worker > 0
    assert cfg.to_dict() == parsed("tune" if job == "train" else "train", *argv).to_dict()


def test_the_dotted_overrides_have_the_last_word_and_absent_flags_none():
    assert parsed("train", "--folds", "2", "tune.folds=1").tune.folds == 1
    assert parsed("train", "--use-gpu").train.use_gpu
    assert parsed("prepare", "--shards-dir", "s3://b/shards").data.shards_dir == "s3://b/shards"
    args = build_parser().parse_args(["train", "--fold", "3"])
    assert args.fold == 3 and parsed("train", "--fold", "3").tune.folds is None


@pytest.mark.parametrize("job", ["train", "tune"])
def test_a_config_file_is_not_overridden_by_flags_left_out(tmp_path, job):
    given = {
        "data": {"data_dir": "/corpus"},
        "train": {"num_workers": 3, "use_gpu": True, "gpus_per_worker": 0.5},
        "tune": {"modes": ["in"], "seeds": [4], "folds": 2, "final": True, "num_samples": 7},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(given))
    cfg = parsed(job, "--config", str(path))
    assert {s: {k: value(cfg, f"{s}.{k}") for k in keys} for s, keys in given.items()} == given


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--mode", "turbo"],  # now --modes
        ["tune", "--workers-per-trial", "2"],  # now --num-workers
        ["prepare", "--out", "shards"],  # now --shards-dir
        ["train", "--fold", "1", "--folds", "2"],  # one or the first N
        ["tune", "--fold", "1"],  # a search per fold: train's alone
        ["tune", "--num-sample", "1"],  # no abbreviations: a renamed flag is never a prefix
    ],
)
def test_flags_that_are_gone_or_exclude_each_other_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert "error:" in capsys.readouterr().err


def helps() -> dict[str, str]:
    """Each subcommand's --help."""
    (subcommands,) = [a for a in build_parser()._actions if a.dest == "command"]
    return {name: parser.format_help() for name, parser in subcommands.choices.items()}


def test_help_texts_say_outer_fold_and_show_the_configs_defaults():
    texts = helps()
    for name in ("train", "tune"):
        assert "outer fold" in texts[name]
        assert not {"session", "LOSO", "leave-one"} & set(texts[name].replace(",", " ").split())
    defaults = Config()
    assert f"default: {defaults.tune.num_samples})" in " ".join(texts["tune"].split())
    assert f"default: {defaults.train.num_workers})" in " ".join(texts["train"].split())
    # a flag that sets a config key has no default of its own: the config's stands
    for action in build_parser()._actions[-1].choices["tune"]._actions:
        if action.dest in CONFIG_FLAGS:
            assert action.default is None, action.dest
