"""Hugging Face audio and text encoders with configurable dropout and masked mean pooling.

The audio encoder is split at its first dropout layer: the convolutional feature encoder
(no dropout) is the shared *prefix* that runs once per batch; everything after it is the *suffix*
that runs on the batch duplicated into views. Text encoders start with dropout right after the
embedding lookup, so their whole stack is the suffix.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, Wav2Vec2Config

from turbo_ray.config import TINY_AUDIO, ModelConfig
from turbo_ray.presets import encoder_names


def tiny_audio_config() -> Wav2Vec2Config:
    """≈0.5 M-parameter wav2vec2: 7-layer conv front end (20 ms frames), 2 transformer layers."""
    return Wav2Vec2Config(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        conv_dim=(64,) * 7,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        vocab_size=32,
    )


# "dropout": DistilBERT, BART
HIDDEN_DROPOUT = (
    "hidden_dropout",
    "hidden_dropout_prob",
    "activation_dropout",
    "feat_proj_dropout",
    "dropout",
)
ATTENTION_DROPOUT = ("attention_dropout", "attention_probs_dropout_prob")


def _dropout_overrides(config, dropout: float, attention_dropout: float) -> dict:
    """Dropout settings for whichever of the usual attribute names this config family uses; a family
    with none of them is an error (the views would differ by nothing the config controls)."""
    out = {k: dropout for k in HIDDEN_DROPOUT if hasattr(config, k)}
    out |= {k: attention_dropout for k in ATTENTION_DROPOUT if hasattr(config, k)}
    for kind, names in (("hidden", HIDDEN_DROPOUT), ("attention", ATTENTION_DROPOUT)):
        if not set(names) & set(out):
            key = "model.dropout" if kind == "hidden" else "model.attention_dropout"
            raise ValueError(
                f"{type(config).__name__} has no {kind} dropout field this project knows "
                f"({', '.join(names)}): {key} would not reach it; add the field's name "
                f"in turbo_ray/model/encoders.py"
            )
    # LayerDrop and SpecAugment would make the views differ by more than dropout, and LayerDrop
    # leaves parameters unused in a step, which DDP rejects.
    out |= {
        k: v for k, v in (("layerdrop", 0.0), ("apply_spec_augment", False)) if hasattr(config, k)
    }
    return out


def load_pretrained(
    name: str, dropout: float, attention_dropout: float, weights: bool = True
) -> nn.Module:
    """`AutoModel` by hub name or local directory (never with remote code), dropout from the
    config; `weights=False`: its architecture only (randomly initialised)."""
    tiny = name == TINY_AUDIO
    config = (
        tiny_audio_config() if tiny else AutoConfig.from_pretrained(name, trust_remote_code=False)
    )
    for key, value in _dropout_overrides(config, dropout, attention_dropout).items():
        setattr(config, key, value)
    if tiny or not weights:
        return AutoModel.from_config(config)
    return AutoModel.from_pretrained(name, config=config, trust_remote_code=False)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions of (B, T, D) given a (B, T) mask."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class AudioEncoder(nn.Module):
    """wav2vec2-family model (wav2vec2, HuBERT, WavLM, data2vec-audio) pooled to one vector."""

    def __init__(
        self, model: nn.Module, freeze_feature_encoder: bool = True, pretrained: bool = True
    ):
        super().__init__()
        self.pretrained = pretrained
        missing = [
            m
            for m in ("feature_extractor", "feature_projection", "encoder")
            if not hasattr(model, m)
        ]
        if missing:
            raise ValueError(
                f"{type(model).__name__} is not a wav2vec2-style audio encoder (no {missing})"
            )
        self.model = model
        self.dim = model.config.hidden_size
        self.frozen_prefix = freeze_feature_encoder
        # GroupNorm in the conv front end (wav2vec2-base) normalises over the whole padded length
        self.per_utterance = getattr(model.config, "feat_extract_norm", "layer") == "group"
        if freeze_feature_encoder:
            model.feature_extractor.requires_grad_(False)
        if getattr(model, "masked_spec_embed", None) is not None:
            # SpecAugment is off: unused, and DDP rejects it
            model.masked_spec_embed.requires_grad_(False)

    def prefix(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised waveforms (B, S) → conv features (B, T, C) and their frame mask (B, T).

        A frozen prefix runs without autograd: Hugging Face's feature encoder otherwise marks its
        input as requiring grad in training, and backward would run through every conv layer for
        nothing.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_prefix):
            return self._prefix(waveforms, lengths)

    def _prefix(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid = torch.arange(waveforms.shape[1], device=waveforms.device) < lengths[:, None]
        n = lengths.clamp_min(1)[:, None].to(waveforms.dtype)
        mean = (waveforms * valid).sum(1, keepdim=True) / n
        var = (((waveforms - mean) * valid) ** 2).sum(1, keepdim=True) / n
        x = ((waveforms - mean) / (var + 1e-7).sqrt()) * valid
        frames = self.model._get_feat_extract_output_lengths(lengths)
        if self.per_utterance:  # each on its own length: its features never depend on its batch
            longest = int(frames.max())
            features = torch.cat(
                [
                    nn.functional.pad(
                        self.model.feature_extractor(x[i : i + 1, :n]), (0, longest - f)
                    )
                    for i, (n, f) in enumerate(zip(lengths.tolist(), frames.tolist()))
                ]
            ).transpose(1, 2)
        else:  # LayerNorm per frame: padding changes nothing in the valid frames
            features = self.model.feature_extractor(x).transpose(1, 2)
        return features, torch.arange(features.shape[1], device=x.device) < frames[:, None]

    def suffix(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Conv features → pooled (B, D); every dropout layer of the model is in here."""
        projected = self.model.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected
        hidden = self.model.encoder(hidden, attention_mask=frame_mask).last_hidden_state
        return masked_mean(hidden, frame_mask)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, views: int = 1
    ) -> torch.Tensor:
        """(views·B, D): the prefix runs once, the suffix on the features repeated `views` times."""
        features, mask = self.prefix(waveforms, lengths)
        return self.suffix(features.repeat(views, 1, 1), mask.repeat(views, 1))


class TextEncoder(nn.Module):
    """Transformer text encoder (BERT, RoBERTa, MiniLM …) pooled by masked mean over tokens."""

    def __init__(self, model: nn.Module, pretrained: bool = True):
        super().__init__()
        self.pretrained = pretrained
        if getattr(model, "pooler", None) is not None:
            # unused: we pool ourselves, and DDP rejects parameters with no grad
            model.pooler = None
        self.model = model
        self.dim = model.config.hidden_size

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, views: int = 1
    ) -> torch.Tensor:
        """(views·B, D) from one forward over the token batch repeated `views` times."""
        input_ids, attention_mask = input_ids.repeat(views, 1), attention_mask.repeat(views, 1)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)


def build_encoders(
    cfg: ModelConfig, pretrained: bool = True
) -> tuple[AudioEncoder | None, TextEncoder | None]:
    """The encoders of `cfg.modalities` (None for a modality left out); `pretrained=False`:
    without loading their weights."""
    audio_name, text_name = encoder_names(cfg)
    audio = text = None
    if "audio" in cfg.modalities:
        audio = AudioEncoder(
            load_pretrained(audio_name, cfg.dropout, cfg.attention_dropout, pretrained),
            cfg.freeze_feature_encoder,
            pretrained=audio_name != TINY_AUDIO,
        )
    if "text" in cfg.modalities:
        text = TextEncoder(
            load_pretrained(text_name, cfg.dropout, cfg.attention_dropout, pretrained)
        )
    return audio, text
