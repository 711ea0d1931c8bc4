"""Encoders and the two-view Turbo model."""

from turbo_ray.model.encoders import AudioEncoder, TextEncoder, build_encoders
from turbo_ray.model.turbo import TurboModel, TurboOutput, build_model

__all__ = [
    "AudioEncoder",
    "TextEncoder",
    "TurboModel",
    "TurboOutput",
    "build_encoders",
    "build_model",
]
