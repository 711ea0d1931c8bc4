"""Ray Train on the demo corpus: real local Ray, real TorchTrainer, tiny preset."""
import json
from pathlib import Path

import torch

from turbo_ray.config import load_config
from turbo_ray.data.pipeline import PadCollate, pad_token_id
from turbo_ray.loso import fold_datasets
from turbo_ray.model import build_model
from turbo_ray.train import build_optimizer, build_trainer, evaluate, load_model

FAST = ["data.max_seconds=2.0", "data.batch_size=8", "train.epochs=3", "train.num_workers=2",
        "train.num_to_keep=null", "model.head_hidden=64"]


def fit(cfg, corpus, name, **kwargs):
    fold = corpus.fold(cfg.data)
    datasets = fold_datasets(cfg, corpus, fold, with_test=False)
    trainer = build_trainer(cfg, datasets, corpus.classes, len(fold.train), name, **kwargs)
    return trainer.fit()


def test_optimizer_groups_pretrained_encoders_at_encoder_lr_and_is_fused():
    cfg = load_config(None, ["train.lr=1e-3", "train.encoder_lr=1e-5"])
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    fast, slow = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-5]
    assert slow == {id(p) for p in model.text_encoder.parameters()}  # MiniLM is pretrained, tiny audio is not
    assert {id(p) for p in model.audio_encoder.parameters() if p.requires_grad} <= fast
    assert len(fast) + len(slow) == sum(p.requires_grad for p in model.parameters())
    assert optimizer.defaults["fused"]  # one kernel over all parameters: 7x faster steps on CPU


def test_two_worker_run_survives_a_worker_failure_learns_and_restores(ray_local, demo_corpus, tmp_path):
    # one realistic run: a worker dies in epoch 2; Train restarts the group from the epoch-1 checkpoint
    cfg = load_config(None, FAST + [f"train.storage_path={tmp_path}", "train.max_failures=1"])
    marker = tmp_path / "failed-once"
    result = fit(cfg, demo_corpus, "two-workers", inject_failure={"epoch": 2, "marker": str(marker)})
    assert marker.exists(), "the injected failure did not fire"
    assert result.error is None
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    assert [m["epoch"] for m in history] == [1, 2, 3]  # no epoch repeated or skipped
    metas = [json.loads((Path(c.path) / "meta.json").read_text()) for c, _ in result.best_checkpoints]
    assert sorted(m["epoch"] for m in metas) == [1, 2, 3]
    for m in history:
        assert {"train_ce", "train_in", "train_cross", "train_total", "val_wa", "val_ua", "val_f1"} <= set(m)
        assert m["val_n"] == len(demo_corpus.fold(cfg.data).val)  # rank 0 saw the whole val split
    assert history[-1]["train_total"] < history[0]["train_total"]

    # the checkpoint restores exactly: re-evaluating it reproduces the reported validation metrics
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_ua"])
    model, meta = load_model(best_ckpt.path)
    assert meta["epoch"] == best["epoch"] and meta["classes"] == list(demo_corpus.classes)
    state = torch.load(Path(best_ckpt.path) / "train_state.pt", weights_only=True)  # no pickled objects
    assert state["epoch"] == best["epoch"] and "optimizer" in state and "scheduler" in state
    val = fold_datasets(cfg, demo_corpus, demo_corpus.fold(cfg.data))["val"]
    again = evaluate(model, val.iter_torch_batches(batch_size=8, collate_fn=PadCollate(pad_token_id(cfg))),
                     len(demo_corpus.classes), torch.device("cpu"))
    assert again["confusion"] == best["val_confusion"] and again["ua"] == best["val_ua"]

    # the same run name again resumes from its last checkpoint: nothing is retrained
    before = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
    again = fit(cfg, demo_corpus, "two-workers")
    assert again.error is None
    assert sorted(p.name for p in Path(again.path).glob("checkpoint_*")) == before
