"""A trained classifier in a self-contained folder, and loading it back: no Ray, no run folder, no
hub; CPU or GPU; weights in safetensors (no code runs on load; memory-mapped).

    write_model_folder(model, cfg, classes, "models/ser", source={...})   # `turbo-ray export`
    classifier = load_classifier("models/ser")
    probs = classifier.predict_rows(rows)       # rows: utterance_id, audio bytes, sample_rate, text

The folder:
    model.safetensors the weights (format 1, before: model.pt, a state dict torch loads with
                      `weights_only`; still read)
    turbo_ray.json    its format, config, classes, how audio and text are prepared, the precision
                      it is evaluated in, the versions that made it, the checkpoint it came from
    audio_encoder/    the audio encoder's config      (Hugging Face `save_pretrained`; none in a
                      text-only model)
    text_encoder/     the text encoder's config (none in an audio-only model) and the tokenizer
                      that prepares every input's text, as in training
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from turbo_ray.config import Config, override
from turbo_ray.data.preprocess import Padding, padding_args, preprocess_for, tokenizer_name
from turbo_ray.errors import ModelFolderError, UsageError
from turbo_ray.inference import forward_pass
from turbo_ray.model import TurboModel, build_model
from turbo_ray.paths import MODEL_FILE

FORMAT = 2  # of the folder written; 2: model.safetensors (1: model.pt)
WEIGHTS = {1: "model.pt", 2: "model.safetensors"}  # the formats read: each one's weights file
META = "turbo_ray.json"
ENCODERS = {"audio": "audio_encoder", "text": "text_encoder"}  # modality → its subfolder
BATCH = 16  # utterances per forward in prediction


@dataclass(frozen=True)
class Classifier:
    model: TurboModel
    cfg: Config  # with the encoders pointing into the folder
    classes: tuple[str, ...]
    device: torch.device

    def predict_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (rows × classes) of a batch of rows as shards hold them
        (`utterance_id`, `audio` bytes, `audio_format`, `sample_rate`, `text`), prepared exactly
        as in training (resampled, tokenized, centre-cropped), `BATCH` at a time."""
        n = len(rows["utterance_id"])
        rows = rows | {"label_id": np.zeros(n, dtype=np.int64)}  # unused: prediction
        prepare, pad = preprocess_for(self.cfg), Padding(*padding_args(self.cfg))
        batches = (
            pad(prepare({k: v[i : i + BATCH] for k, v in rows.items()})) for i in range(0, n, BATCH)
        )
        logits, _ = forward_pass(self.model, batches, self.device, self.cfg.train.precision)
        return logits.softmax(-1).numpy()


def write_model_folder(
    model: TurboModel, cfg: Config, classes: list[str], out: str | Path, source: dict
) -> Path:
    """Write the model folder `out` whole or not at all (built beside it, then renamed); `out`
    must not exist yet. `source`: where the weights came from (checkpoint, epoch, scores)."""
    from transformers import AutoTokenizer

    out = Path(out).expanduser().resolve()
    if out.exists():
        raise ModelFolderError(f"{out} already exists: export into a new folder")
    building = out.with_name(f".{out.name}.partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    safetensors.torch.save_model(model, str(building / WEIGHTS[FORMAT]))
    for modality, folder in ENCODERS.items():
        encoder = getattr(model, f"{modality}_encoder")
        if encoder is not None:
            encoder.model.config.save_pretrained(building / folder)
    # the data pipeline tokenizes whatever the model reads (`preprocess_for`)
    AutoTokenizer.from_pretrained(tokenizer_name(cfg)).save_pretrained(building / ENCODERS["text"])
    meta = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "classes": list(classes),
        "inputs": {
            "sample_rate": cfg.data.sample_rate,
            "channels": "mono: a multi-channel file is the mean of its channels",
            "max_seconds": cfg.data.max_seconds,
            "crop": "centred window of max_seconds; shorter audio is padded",
            "max_text_tokens": cfg.data.max_text_tokens,
        },
        # the test pass's and prediction's ("auto": bf16 on CUDA, fp32 on CPU)
        "precision": cfg.train.precision,
        "versions": {name: version(name) for name in ("turbo-ray", "torch", "transformers")},
        "source": source,
    }
    (building / META).write_text(json.dumps(meta, indent=1))
    building.rename(out)
    return out


def load_classifier(directory: str | Path, device: str | torch.device | None = None) -> Classifier:
    """The classifier of a model folder, on `device` (default: CUDA if there is one)."""
    directory = Path(directory).expanduser().resolve()
    meta_file = directory / META
    if not meta_file.is_file():
        raise ModelFolderError(f"{directory} is not a model folder: no {META} in it")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") not in WEIGHTS:
        raise ModelFolderError(
            f"{directory} has model folder format {meta.get('format')!r} (made by turbo-ray "
            f"{meta.get('versions', {}).get('turbo-ray', '?')}); this turbo-ray reads formats "
            f"{', '.join(map(str, WEIGHTS))}: export it again with this version"
        )
    local = {f"model.{m}_encoder": str(directory / f) for m, f in ENCODERS.items()}
    cfg = override(Config.from_dict(meta["config"]), local)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg, len(meta["classes"]), pretrained=False)
    weights = directory / WEIGHTS[meta["format"]]
    if meta["format"] == 1:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        safetensors.torch.load_model(model, str(weights))
    return Classifier(model.to(device).eval(), cfg, tuple(meta["classes"]), device)


def export_checkpoint(checkpoint_dir: str | Path, out: str | Path) -> Path:
    """The self-contained model folder of a checkpoint (`turbo-ray export`; `classifier.py`)."""
    if not (Path(checkpoint_dir) / MODEL_FILE).is_file():
        raise UsageError(f"{checkpoint_dir} is not a checkpoint folder: no {MODEL_FILE} in it")
    if Path(out).exists():
        raise UsageError(f"{out} already exists: export into a new folder")
    from turbo_ray.checkpoints import load_model  # here: loading a model folder needs no Ray

    model, meta = load_model(checkpoint_dir)
    scores = {k: v for k, v in meta["metrics"].items() if isinstance(v, float)}
    source = {"checkpoint": str(checkpoint_dir), "epoch": meta["epoch"], "metrics": scores}
    cfg = Config.from_dict(meta["config"])
    return write_model_folder(model, cfg, meta["classes"], out, source)
