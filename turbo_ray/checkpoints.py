"""A run's checkpoints: what one holds, which ones Ray keeps while a run trains, the one a finished
run selects, and what a finished job prunes.

    save_checkpoint(directory, model, optimizer, scheduler, progress, cfg, classes, metrics)
    model, meta = load_model(directory)                    # weights, config, classes, metrics
    checkpoint, metrics = checkpoint_at(run, selected_epoch(run, cfg.tune.metric))
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray.train import Checkpoint

from turbo_ray.config import Config
from turbo_ray.model import TurboModel, build_model
from turbo_ray.paths import META_FILE, MODEL_FILE, STATE_FILE, filesystem

KEEP_SCORE = "checkpoint_score"  # what ranks the checkpoints Ray keeps (`keep_score`)


def keep_score(score: float, epoch: int) -> float:
    """The validation score with ties going to the earlier epoch, as selection breaks them (Ray
    would keep the later of two equal scores): distinct scores keep their order."""
    return score - epoch * 1e-12


def save_checkpoint(
    directory: Path,
    model: TurboModel,
    optimizer,
    scheduler,
    progress: tuple[int, float, int],
    cfg: Config,
    classes: list[str],
    metrics: dict,
) -> None:
    """Weights and optimizer state as plain tensors (loadable with `torch.load(weights_only=True)`);
    `progress`: (this epoch, the best selection score up to it, that score's epoch)."""
    epoch, best, best_epoch = progress
    torch.save(model.state_dict(), directory / MODEL_FILE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best": best,
            "best_epoch": best_epoch,
        },
        directory / STATE_FILE,
    )
    meta = {"epoch": epoch, "config": cfg.to_dict(), "classes": classes, "metrics": metrics}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def read_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """A checkpoint's weights (on `device`) and its meta (epoch, config, classes, metrics)."""
    directory = Path(directory)
    weights = torch.load(directory / MODEL_FILE, map_location=device, weights_only=True)
    return weights, json.loads((directory / META_FILE).read_text())


def load_model(
    checkpoint_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[TurboModel, dict]:
    """Rebuild the model of a checkpoint and load its weights; returns (model, meta)."""
    weights, meta = read_checkpoint(checkpoint_dir, device)
    model = build_model(Config.from_dict(meta["config"]), len(meta["classes"]), pretrained=False)
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def restore(
    model: TurboModel, checkpoint: Checkpoint | None
) -> tuple[TurboModel, dict | None, dict | None]:
    """Load a run's last checkpoint into `model`; returns (model, training state, last metrics)."""
    if checkpoint is None:
        return model, None, None
    with checkpoint.as_directory() as d:
        weights, meta = read_checkpoint(d)
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model, state, meta["metrics"]


def retention(cfg: Config) -> dict[str, Any]:
    """Which checkpoints a run keeps while it trains (either runner's CheckpointConfig): the
    `train.num_to_keep` best by validation score, ties to the earlier epoch (Ray also keeps the
    latest, to resume from)."""
    return {
        "num_to_keep": cfg.train.num_to_keep,
        "checkpoint_score_attribute": KEEP_SCORE,
        "checkpoint_score_order": "max",
    }


def selected_epoch(result, metric: str) -> int:
    """The epoch a run (a Train run or a Tune trial) selects: its best validation `metric`, ties to
    the earlier epoch, as its epochs reported it (`best_epoch`; exact where a restored run's
    history lacks epochs)."""
    history = result.metrics_dataframe
    return int(history.loc[history[f"best_{metric}"].idxmax(), "best_epoch"])


def checkpoint_at(result, epoch: int) -> tuple[Checkpoint, dict[str, Any]]:
    """The run's kept checkpoint of `epoch` (the one selection chose) and its metrics."""
    kept = result.best_checkpoints or []
    for checkpoint, metrics in kept:
        if metrics.get("epoch") == epoch:
            return checkpoint, metrics
    epochs = sorted(m.get("epoch") for _, m in kept)
    raise RuntimeError(f"run {result.path} kept no checkpoint of epoch {epoch} (kept: {epochs})")


def prune_checkpoints(storage: str, keep: Collection[str]) -> int:
    """Free the disk of finished Train runs: under `storage` (a local path or URI holding run
    folders), delete every checkpoint not in `keep` (`Checkpoint.path`s) and the optimizer state of
    those kept (a finished run never resumes: only the weights are still used). Returns the bytes
    freed."""
    fs, root = filesystem(storage)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    checkpoints = {
        f.path
        for f in found
        if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")
    }
    freed = 0
    for checkpoint in sorted(checkpoints):
        if checkpoint in keep:
            doomed = [f for f in found if f.path == f"{checkpoint}/{STATE_FILE}"]
            for f in doomed:
                fs.delete_file(f.path)
        else:
            doomed = [f for f in found if f.path.startswith(f"{checkpoint}/")]
            fs.delete_dir(checkpoint)
        freed += sum(f.size or 0 for f in doomed if f.type == pafs.FileType.File)
    return freed
