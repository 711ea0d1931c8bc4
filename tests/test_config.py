"""Typed config: YAML + dotted overrides, unknown keys and bad values named in the error."""

import re
import subprocess

import pytest
import yaml

from turbo_ray.cli import main
from turbo_ray.config import Config, load_config
from turbo_ray.errors import ConfigError


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  temperature: 0.2\n  cross_pairs: ['11', '22']\ntrain:\n  epochs: 3\n")
    cfg = load_config(
        path, ["train.epochs=7", "model.dropout=0.25", "data.data_dir=/x/IEMOCAP_full_release"]
    )
    assert cfg.loss.temperature == 0.2 and cfg.loss.cross_pairs == ["11", "22"]
    assert cfg.train.epochs == 7 and cfg.model.dropout == 0.25 and cfg.train.lr == Config().train.lr
    assert cfg.data.data_dir == "/x/IEMOCAP_full_release"
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_int_and_exponent_are_accepted_for_float_and_none_for_optional():
    cfg = load_config(None, ["loss.temperature=1", "model.audio_encoder=null", "train.lr=3e-4"])
    assert cfg.loss.temperature == 1.0 and isinstance(cfg.loss.temperature, float)
    assert cfg.train.lr == 3e-4  # YAML 1.1 reads 3e-4 (no dot) as a string
    assert cfg.model.audio_encoder is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.temprature=0.1"], "unknown config key 'loss.temprature'"),
        (["optim.lr=0.1"], "unknown config key 'optim'"),
        (["train.epochs=three"], "train.epochs must be int"),
        (["train.epochs=true"], "train.epochs must be int"),
        (["train.lr=fast"], "train.lr must be float, got 'fast'"),
        (["data.read_tasks=0"], "data.read_tasks must be >= 1"),
        (["loss.mode=both"], "loss.mode must be one of"),
        (["loss.cross_pairs=['13']"], "cross_pairs"),
        (["model.dropout=1.5"], "model.dropout must be in"),
        # the registries a config names are checked here, not deep in the module that uses them
        (["model.preset=huge"], "model.preset must be one of tiny, base, large; got 'huge'"),
        (["data.classes=angry"], "data.classes 'angry': a classifier needs two classes or more"),
        (["data.classes=a,b=c+"], "expected classes like a,b=b1\\+b2, got item 'b=c\\+'"),
        (["data.classes=a,b=a+c"], "label 'a' in two classes"),
        (["data.classes=a,b,a"], "class 'a' twice"),
        (["data.folds=1"], "data.folds must be >= 2"),
        (["data.audio_format=mp3"], "data.audio_format must be one of wav, pcm16; got 'mp3'"),
        (["data.val_split=dialog"], "data.val_split must be one of random, speaker; got 'dialog'"),
        (["data.val_fraction=1.0"], "data.val_fraction must be in"),
        (["train.placement_strategy=FAST"], "train.placement_strategy must be one of PACK"),
        (["model.modalities=video"], "model.modalities must be one of audio"),
        (["model.modalities=text"], "one modality. needs loss.mode=baseline"),
        (
            ["tune.modes=[baseline,turbo]", "model.modalities=text", "loss.mode=baseline"],
            "got turbo",
        ),
        (["tune.modes=[basline]"], "tune.modes: 'basline' is not one of baseline, in, cross"),
        (["tune.modes=[turbo,turbo]"], "tune.modes must list distinct values"),
        (["tune.seeds=[]"], "tune.seeds must list distinct values"),
        (["epochs=3"], "must look like section.key"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, overrides)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: tiny\n  droput: 0.1\n")
    with pytest.raises(ConfigError, match="model.droput"):
        load_config(path)


def test_cli_help_and_config_print(run_command, launch):
    assert "config" in run_command("--help")
    assert yaml.safe_load(run_command("config", "loss.mode=in"))["loss"]["mode"] == "in"
    bad = launch("config", "loss.nope=1", stderr=subprocess.PIPE)
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "loss.nope" in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.seed=-1"], "train.seed must be >= 0, got -1"),
        (["data.seed=-2"], "data.seed must be >= 0, got -2"),
        (["tune.seeds=[0,-1]"], r"tune.seeds must be >= 0, got \[0, -1\]"),
    ],
)
def test_negative_seeds_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0,0"], r"tune.seeds must list distinct values, got \[0, 0\]"),
        (["--seeds", "-1"], r"tune.seeds must be >= 0, got \[-1\]"),
        (["--modes", "turbo,turbo"], "tune.modes must list distinct values"),
    ],
)
def test_train_refuses_repeated_or_negative_seeds_and_modes_before_writing(
    tmp_path, capsys, flags, message
):
    out = tmp_path / "out"
    assert main(["train", *flags, "--output-dir", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_a_job_anchors_relative_data_paths_where_it_starts(tmp_path, monkeypatch):
    from turbo_ray.job import Job

    monkeypatch.chdir(tmp_path)
    given = load_config(
        None, ["data.cache_dir=cache", "data.shards_dir=s3://bucket/shards", "data.data_dir=data"]
    )
    cfg = Job.open("train", given, tmp_path / "job").cfg
    # a trial's process, in another folder, reads the same places
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.data.data_dir == str(tmp_path / "data")
    assert cfg.data.shards_dir == "s3://bucket/shards"
    home = load_config(None, [])
    assert Job.open("train", home, tmp_path / "job2").cfg.data == home.data  # ~/…
