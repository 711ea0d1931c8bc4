"""All-gathered negatives on 2 real gloo processes (DDP) equal one process on the concatenated
batch."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from turbo_ray.losses import LossWeights, gather_batch, objective
from turbo_ray.model.turbo import TurboOutput

BATCH, DIM = 6, 5


class TwoViewToy(nn.Module):
    """Deterministic two views per modality (distinct heads stand in for dropout masks)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.audio = nn.ModuleList([nn.Linear(DIM, 4), nn.Linear(DIM, 4)])
        self.text = nn.ModuleList([nn.Linear(DIM, 4), nn.Linear(DIM, 4)])
        self.head = nn.Linear(2 * DIM, 3)
        self.log_temperature = nn.Parameter(torch.tensor(-2.0))

    def forward(self, xa, xt):
        logits = self.head(torch.cat([xa, xt], -1)).repeat(2, 1)
        return TurboOutput(
            logits,
            torch.stack([h(xa) for h in self.audio]),
            torch.stack([h(xt) for h in self.text]),
            self.log_temperature.exp(),
        )


def data():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
        torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
        torch.tensor([0, 1, 2, 0, 1, 2]),
    )


def loss_and_grads(model, xa, xt, y):
    parts = objective(model(xa, xt), y, LossWeights(w_in=0.7, w_cross=1.3))
    parts["total"].backward()
    named = (
        model.module.named_parameters() if hasattr(model, "module") else model.named_parameters()
    )
    return {k: v.item() for k, v in parts.items()}, {n: p.grad.clone() for n, p in named}


def worker(rank, world, port, out_dir, sizes):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        xa, xt, y = data()
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        if len(set(sizes)) == 1:
            model = nn.parallel.DistributedDataParallel(TwoViewToy().double())
            torch.save(
                loss_and_grads(model, xa[lo:hi], xt[lo:hi], y[lo:hi]), f"{out_dir}/rank{rank}.pt"
            )
        else:
            local = xa[lo:hi].clone().requires_grad_()
            gathered = gather_batch(local.unsqueeze(0), dim=1)[0]
            gathered.sum().backward()
            torch.save((gathered.detach(), local.grad), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_two_ranks(tmp_path, sizes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(tmp_path), sizes), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    (loss0, grads0), (loss1, grads1) = run_two_ranks(tmp_path, [3, 3])
    single_loss, single_grads = loss_and_grads(TwoViewToy().double(), *data())
    for key in ("in", "cross"):  # contrastive parts: identical global value on every rank
        assert (
            abs(loss0[key] - single_loss[key]) < 1e-12
            and abs(loss1[key] - single_loss[key]) < 1e-12
        )
    assert abs((loss0["ce"] + loss1["ce"]) / 2 - single_loss["ce"]) < 1e-12
    for name, grad in single_grads.items():  # DDP-averaged gradients == single-process gradients
        assert torch.allclose(grads0[name], grad, atol=1e-12), name
        assert torch.allclose(grads1[name], grad, atol=1e-12), name


def test_gather_handles_unequal_local_batches_and_keeps_local_gradient(tmp_path):
    results = run_two_ranks(tmp_path, [4, 2])
    xa = data()[0]
    for rank, (gathered, grad) in enumerate(results):
        assert torch.equal(gathered, xa)
        assert (
            len(grad) == (4, 2)[rank]
        )  # local gradient kept, scaled by the world size (see gather_batch)
        assert torch.equal(grad, torch.full_like(grad, 2.0))


def test_without_process_group_gather_is_identity():
    x = torch.randn(2, 3, 4)
    assert gather_batch(x, dim=1) is x
