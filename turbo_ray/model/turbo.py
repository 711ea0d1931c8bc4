"""The Turbo model: two dropout views per modality from one forward, projections,
fusion classifier."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from turbo_ray.config import MODE_TERMS, Config
from turbo_ray.model.encoders import AudioEncoder, TextEncoder, build_encoders

MIN_TEMPERATURE = 0.01  # a learnable τ is clamped here after every step, as open_clip does


class TurboOutput(NamedTuple):
    """What the loss needs, and nothing from elsewhere
    (as open_clip's CLIP returns its logit scale)."""

    logits: torch.Tensor  # (views·B, classes), view-major
    audio: torch.Tensor | None = None  # (views, B, proj_dim) contrastive embeddings; None: no views
    text: torch.Tensor | None = None  # (views, B, proj_dim)
    # the InfoNCE τ (a parameter: `loss.temperature` inits it)
    temperature: torch.Tensor | None = None


class TurboModel(nn.Module):
    """Audio + text encoders, contrastive projection heads and a classifier on the fused pooled
    features.

    In training with `contrastive=True` the batch goes through the encoders as two views
    (one forward over the duplicated batch); in eval, or for the baseline, it is one deterministic
    pass.
    """

    def __init__(
        self,
        audio: AudioEncoder | None,
        text: TextEncoder | None,
        num_classes: int,
        proj_dim: int = 128,
        head_hidden: int = 256,
        head_dropout: float = 0.1,
        contrastive: bool = True,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
    ):
        super().__init__()
        if contrastive and (audio is None or text is None):
            raise ValueError(
                "the contrastive terms need both encoders (a unimodal model: baseline)"
            )
        # either may be None: a unimodal baseline classifies the other one's features
        self.audio_encoder, self.text_encoder = audio, text
        self.classifier = nn.Sequential(
            nn.Linear(sum(e.dim for e in (audio, text) if e is not None), head_hidden),
            nn.GELU(),
            nn.Dropout(head_dropout),
            nn.Linear(head_hidden, num_classes),
        )
        self.contrastive = contrastive
        # the baseline has no projections: DDP rejects parameters that get no gradient
        if contrastive:
            self.audio_proj = nn.Linear(audio.dim, proj_dim)
            self.text_proj = nn.Linear(text.dim, proj_dim)
            self.log_temperature = nn.Parameter(
                torch.tensor(math.log(temperature)), requires_grad=learnable_temperature
            )

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep a learnable τ ≥ MIN_TEMPERATURE (the logits' scale must stay bounded)."""
        if self.contrastive and self.log_temperature.requires_grad:
            self.log_temperature.clamp_(min=math.log(MIN_TEMPERATURE))

    def forward(
        self,
        waveforms: torch.Tensor,
        audio_lengths: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> TurboOutput:
        views = 2 if self.training and self.contrastive else 1
        audio = text = None
        if self.audio_encoder is not None:
            audio = self.audio_encoder(waveforms, audio_lengths, views)
        if self.text_encoder is not None:
            text = self.text_encoder(input_ids, attention_mask, views)
        logits = self.classifier(torch.cat([f for f in (audio, text) if f is not None], dim=-1))
        if views == 1:  # eval or baseline: no contrastive terms to compute
            return TurboOutput(logits)
        batch = waveforms.shape[0]
        return TurboOutput(
            logits,
            self.audio_proj(audio).view(views, batch, -1),
            self.text_proj(text).view(views, batch, -1),
            self.temperature,
        )


def build_model(cfg: Config, num_classes: int, pretrained: bool = True) -> TurboModel:
    """The model of `cfg` with a classifier over `num_classes` (the corpus's class set decides
    it); `pretrained=False` builds the encoders from their configs alone, for weights that come
    with a checkpoint."""
    audio, text = build_encoders(cfg.model, pretrained)
    return TurboModel(
        audio,
        text,
        num_classes=num_classes,
        proj_dim=cfg.model.proj_dim,
        head_hidden=cfg.model.head_hidden,
        head_dropout=cfg.model.head_dropout,
        contrastive=bool(MODE_TERMS[cfg.loss.mode]),
        temperature=cfg.loss.temperature,
        learnable_temperature=cfg.loss.learnable_temperature,
    )
