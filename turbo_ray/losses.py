"""InfoNCE, the Turbo objective (in-modal + cross-modal) and the total training loss.

Distributed negatives follow open_clip's `gather_features`: every rank all-gathers the embeddings,
keeps the gradient of its own slice and computes the loss over the global batch. DDP then averages
gradients over W ranks while each rank only reaches its own slice, so the embedding gradient would
be 1/W of the single-process one; the local slice's gradient is scaled by W to restore it, making W
workers exactly equal one process on the concatenated batch (loss value and every gradient,
including a learnable temperature's, which every rank sees whole).

Every loss here is computed in float32 with autocast off, whatever the encoders ran in: with
τ = 0.02 the logits reach ±50, where bfloat16's spacing is 0.25.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from turbo_ray.config import CROSS_PAIRS, MODE_TERMS, LossConfig
from turbo_ray.model.turbo import TurboOutput


def _fp32(x: torch.Tensor | float) -> torch.Tensor | float:
    """float32 (float64 stays float64, for exact reference computations)."""
    return x.float() if isinstance(x, torch.Tensor) and x.dtype != torch.float64 else x


def info_nce(u: torch.Tensor, v: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of u is positive with row i of v, other rows are negatives."""
    with torch.autocast(u.device.type, enabled=False):
        u, v = F.normalize(_fp32(u), dim=-1), F.normalize(_fp32(v), dim=-1)
        logits = u @ v.T / _fp32(temperature)
        target = torch.arange(len(u), device=u.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def turbo_loss(
    a1: torch.Tensor,
    a2: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    temperature: float | torch.Tensor,
    w_in: float,
    w_cross: float,
    cross_pairs: Sequence[str] = CROSS_PAIRS,
) -> dict[str, torch.Tensor]:
    """In-modal (a1↔a2, t1↔t2, averaged) and cross-modal (audio view i ↔ text view j over
    `cross_pairs`, averaged) InfoNCE; "total" = w_in·in + w_cross·cross
    (cross-entropy not included)."""
    audio, text = {"1": a1, "2": a2}, {"1": t1, "2": t2}
    l_in = 0.5 * (info_nce(a1, a2, temperature) + info_nce(t1, t2, temperature))
    l_cross = torch.stack(
        [info_nce(audio[p[0]], text[p[1]], temperature) for p in cross_pairs]
    ).mean()
    return {"in": l_in, "cross": l_cross, "total": w_in * l_in + w_cross * l_cross}


@dataclass(frozen=True)
class LossWeights:
    """How the objective combines its terms (the temperature comes with the model's output)."""

    w_in: float = 1.0
    w_cross: float = 1.0
    cross_pairs: tuple[str, ...] = CROSS_PAIRS
    gather: bool = True  # negatives from the global batch under DDP

    @classmethod
    def from_config(cls, cfg: LossConfig) -> LossWeights:
        """The config's weights after its ablation mode switches terms off."""
        return cls(
            w_in=cfg.w_in if "in" in MODE_TERMS[cfg.mode] else 0.0,
            w_cross=cfg.w_cross if "cross" in MODE_TERMS[cfg.mode] else 0.0,
            cross_pairs=tuple(cfg.cross_pairs),
            gather=cfg.gather,
        )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All-gather `x` along `dim` from every rank (sizes may differ); only the local slice keeps its
    gradient, multiplied by the world size so that DDP's gradient averaging yields the global
    gradient."""
    world = _world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[dim]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, longest - x.shape[dim]]
    parts = [torch.empty_like(F.pad(x, pad)) for _ in range(world)]
    dist.all_gather(parts, F.pad(x.detach(), pad).contiguous())
    parts = [p.narrow(dim, 0, int(s.item())) for p, s in zip(parts, sizes)]
    parts[dist.get_rank()] = _scale_grad(x, world)
    return torch.cat(parts, dim=dim)


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Exactly the value of `x` (in any precision), gradient multiplied by `factor`."""
    return x.detach() + (x - x.detach()) * factor


def objective(
    out: TurboOutput, labels: torch.Tensor, weights: LossWeights
) -> dict[str, torch.Tensor]:
    """L = CE (averaged over views) + λ_in·L_in + λ_cross·L_cross, with each part for logging."""
    views = out.logits.shape[0] // labels.shape[0]
    with torch.autocast(out.logits.device.type, enabled=False):
        ce = F.cross_entropy(_fp32(out.logits), labels.repeat(views))
    if out.audio is None:
        return {"ce": ce, "total": ce}
    audio, text = out.audio, out.text
    if weights.gather:
        audio, text = gather_batch(audio, dim=1), gather_batch(text, dim=1)
    parts = turbo_loss(
        audio[0],
        audio[1],
        text[0],
        text[1],
        out.temperature,
        weights.w_in,
        weights.w_cross,
        weights.cross_pairs,
    )
    return {"ce": ce, "in": parts["in"], "cross": parts["cross"], "total": ce + parts["total"]}
