"""What every input goes through before the model, in training, evaluation and prediction alike,
without Ray: decode, resample to the encoder's rate, tokenize (`Preprocess`), then crop and pad a
batch (`Padding`).

    rows = Preprocess(tokenizer_name(cfg), cfg.data.sample_rate, cfg.data.max_text_tokens)(batch)
    tensors = Padding(*padding_args(cfg))(rows)        # centred crops (evaluation, prediction)
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from turbo_ray.config import Config
from turbo_ray.data.shards import decode_audio, resample
from turbo_ray.presets import encoder_names


def tokenizer_name(cfg: Config) -> str:
    return encoder_names(cfg.model)[1]


def pad_token_id(cfg: Config) -> int:
    return _tokenizer(tokenizer_name(cfg)).pad_token_id


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    """Loaded once per process: Ray reuses its worker processes across tasks and epochs."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


@dataclass(frozen=True)
class Preprocess:
    """Decode, resample to the encoder rate, tokenize: deterministic, so the same for every epoch.

    A plain callable (run as Ray tasks in reused worker processes), so nothing is started per epoch.
    Crops happen per batch in the training worker (`PadCollate`), where the epoch is known."""

    tokenizer: str
    sample_rate: int
    max_tokens: int

    def _waveform(self, audio: bytes, audio_format: str, rate: int) -> np.ndarray:
        wave = decode_audio(audio, audio_format, rate)
        if rate != self.sample_rate:
            wave = resample(wave, rate, self.sample_rate)
        return wave.astype(np.float32, copy=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        waves = [
            self._waveform(a, f, int(r))
            for a, f, r in zip(batch["audio"], batch["audio_format"], batch["sample_rate"])
        ]
        # may be empty (a filter can leave empty blocks); tokenizers reject []
        texts = list(batch["text"])
        tokens = (
            _tokenizer(self.tokenizer)(texts, truncation=True, max_length=self.max_tokens)[
                "input_ids"
            ]
            if texts
            else []
        )
        return {
            "utterance_id": batch["utterance_id"],
            "label": batch["label_id"].astype(np.int64),
            "waveform": _ragged(waves),
            "input_ids": _ragged([np.asarray(t, dtype=np.int64) for t in tokens]),
        }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class Padding:
    """Runs where the model does (a training worker, an evaluation, a classifier): crops each
    waveform to `max_samples`, pads waveforms and token ids.

    With `seed` (e.g. (train.seed, epoch)) the crop is a random window drawn from
    (seed, utterance id), so an epoch's crops are the same in every run and on every worker count;
    without, it is centred.
    """

    def __init__(self, pad_token_id: int, max_samples: int, seed: tuple[int, ...] | None = None):
        self.pad_token_id, self.max_samples, self.seed = pad_token_id, max_samples, seed

    def crop(self, wave: np.ndarray, utterance_id: str) -> np.ndarray:
        excess = len(wave) - self.max_samples
        if excess <= 0:
            return wave
        if self.seed is None:
            start = excess // 2
        else:
            rng = np.random.default_rng([*self.seed, zlib.crc32(utterance_id.encode())])
            start = int(rng.integers(0, excess + 1))
        return wave[start : start + self.max_samples]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        waves = [
            torch.tensor(self.crop(w, u))  # copies: Arrow buffers are read-only
            for w, u in zip(batch["waveform"], batch["utterance_id"])
        ]
        ids = [torch.tensor(t) for t in batch["input_ids"]]
        input_ids = pad(ids, batch_first=True, padding_value=self.pad_token_id)
        lengths = torch.tensor([len(t) for t in ids])
        return {
            "waveforms": pad(waves, batch_first=True),
            "audio_lengths": torch.tensor([len(w) for w in waves]),
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
            "labels": torch.tensor(batch["label"], dtype=torch.long),
        }


def padding_args(cfg: Config, epoch: int | None = None) -> tuple:
    """`Padding`'s arguments for training epoch `epoch` (random crops seeded by (train.seed,
    epoch)), or for evaluation and prediction (`epoch` None: centred crops)."""
    seed = None if epoch is None else (cfg.train.seed, epoch)
    return pad_token_id(cfg), int(cfg.data.max_seconds * cfg.data.sample_rate), seed


def preprocess_for(cfg: Config) -> Preprocess:
    """The `Preprocess` of a config: its text encoder's tokenizer, its rate, its token limit."""
    return Preprocess(tokenizer_name(cfg), cfg.data.sample_rate, cfg.data.max_text_tokens)
