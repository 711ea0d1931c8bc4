"""The model in evaluation, without Ray: a deterministic pass over batches (dropout off) and its
scores. Validation, the test pass and a classifier's predictions share it.

    logits, labels = forward_pass(model, batches, device, precision)
    scores = evaluate(model, batches, len(classes), device, precision, positive)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from turbo_ray.metrics import classification_report, confusion_matrix
from turbo_ray.model import TurboModel


def forward_precision(precision: str, device: torch.device):
    """The forward's autocast context: bf16 for "bf16" ("auto": on CUDA), none for fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def forward_pass(
    model: TurboModel, batches, device: torch.device, precision: str = "fp32"
) -> tuple[torch.Tensor, np.ndarray]:
    """The logits (float32, on the CPU) and labels of every batch, in order."""
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
            with forward_precision(precision, device):
                logits.append(model(**inputs).logits.float().cpu())
            labels.append(batch["labels"].cpu())
    return torch.cat(logits), torch.cat(labels).numpy()


def evaluate(
    model: TurboModel,
    batches,
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
    positive: int = 1,
) -> dict[str, Any]:
    """One deterministic pass (dropout off): WA, UA, macro-F1 (and, for two classes, ROC-AUC of
    class `positive`) and the confusion matrix."""
    logits, y_true = forward_pass(model, batches, device, precision)
    y_pred, probs = logits.argmax(-1).numpy(), logits.softmax(-1).numpy()
    report = classification_report(y_true, y_pred, num_classes, probs, positive)
    return report | {
        "confusion": confusion_matrix(y_true, y_pred, num_classes).tolist(),
        "n": len(y_true),
    }
