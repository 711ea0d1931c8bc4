"""Turbo: joint in-modal and cross-modal contrastive learning for audio-text classification,
on Ray."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`turbo_ray.load_classifier`, imported on first use (the package itself stays light)."""
    if name == "load_classifier":
        from turbo_ray.classifier import load_classifier

        return load_classifier
    raise AttributeError(f"module 'turbo_ray' has no attribute {name!r}")
