"""Turbo: joint in-modal and cross-modal contrastive learning for audio-text classification,
on Ray."""

__version__ = "0.1.0"
