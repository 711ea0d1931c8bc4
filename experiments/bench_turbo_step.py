"""Training-step cost of Turbo's two views, measured side by side (interleaved) in one run.

    python experiments/bench_turbo_step.py         # tiny preset
    python experiments/bench_turbo_step.py --base  # base-sized, randomly initialised (no download)
    python experiments/bench_turbo_step.py --quick # a few steps: checks that it runs, not a speed

Each step = forward + backward + AdamW step (the library's fused one) on the same encoders, batch
and machine; "baseline" and "turbo" are `turbo_ray.train.train_step`, the step training runs:
  baseline      the baseline model (loss.mode=baseline): one view, CE only
  naive         Turbo as two separate forward passes through both encoders (the paper read
                literally)
  turbo         Turbo as turbo_ray does it: the audio conv prefix P runs once, the batch is
                duplicated after it
  shared P      the work a step does once however many views: the frozen audio conv prefix (forward
                only, no dropout) and the optimizer step
  suffix S      one view of everything else: encoders after the prefix, heads, loss, forward +
                backward
P + S is one baseline step (printed as a check); floor = (P + 2S) / (P + S) is what two views cost
relative to one if duplicating the suffix costs exactly twice.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModel, BertConfig, Wav2Vec2Config

from turbo_ray.config import load_config
from turbo_ray.data.iemocap import DEFAULT_CLASSES
from turbo_ray.inference import forward_precision
from turbo_ray.losses import LossWeights, objective
from turbo_ray.model import AudioEncoder, TextEncoder, TurboModel, TurboOutput, build_model
from turbo_ray.train import build_optimizer, build_scheduler, optimizer_step, train_step


def base_sized_model(cfg) -> TurboModel:
    """wav2vec2-base and BERT-base shapes with random weights (the benchmark needs shapes, not
    knowledge)."""
    audio = AutoModel.from_config(
        Wav2Vec2Config(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            apply_spec_augment=False,
            layerdrop=0.0,
            mask_time_prob=0.0,
        )
    )
    text = AutoModel.from_config(BertConfig())
    return TurboModel(
        AudioEncoder(audio, pretrained=False),
        TextEncoder(text, pretrained=False),
        num_classes=4,
        proj_dim=cfg.model.proj_dim,
        head_hidden=cfg.model.head_hidden,
    )


def make_batch(batch: int, seconds: float, tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16_000)
    return {
        "waveforms": torch.randn(batch, samples, generator=g),
        "audio_lengths": torch.linspace(samples // 2, samples, batch).long(),
        "input_ids": torch.randint(1000, vocab, (batch, tokens), generator=g),
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
        "labels": torch.arange(batch) % 4,
    }


def baseline_model(model: TurboModel, cfg) -> TurboModel:
    """The baseline (loss.mode=baseline: one view, CE only, no projection heads) on `model`'s
    encoders."""
    return TurboModel(
        model.audio_encoder,
        model.text_encoder,
        num_classes=4,
        proj_dim=cfg.model.proj_dim,
        head_hidden=cfg.model.head_hidden,
        contrastive=False,
    ).train()


class StepVariants:
    """The five steps of the module docstring, on one model, batch and device, under
    `cfg.train.precision`."""

    def __init__(self, model: TurboModel, cfg, batch_size: int, seconds: float, device):
        self.model = model.train().to(device)
        self.cfg, self.batch_size, self.device = cfg, batch_size, device
        self.audio_enc, self.text_enc = self.model.audio_encoder, self.model.text_encoder
        self.baseline = baseline_model(self.model, cfg)
        self.baseline.to(device)
        batch = make_batch(batch_size, seconds, 24, self.text_enc.model.config.vocab_size)
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.w, self.lengths, self.ids, self.mask, self.labels = (
            self.batch[k]
            for k in ("waveforms", "audio_lengths", "input_ids", "attention_mask", "labels")
        )
        self.autocast = functools.partial(forward_precision, cfg.train.precision, device)
        with torch.no_grad(), self.autocast():
            self.features, self.frames = self.audio_enc.prefix(self.w, self.lengths)

        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps=10_000)
        self.baseline_optimizer = build_optimizer(self.baseline, cfg)
        self.baseline_scheduler = build_scheduler(self.baseline_optimizer, cfg, steps=10_000)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # what the optimizer steps on when P is timed alone
        self.grads = [torch.zeros_like(p) for p in self.params]

    def by_name(self) -> dict[str, Callable[[], None]]:
        """Each variant by its printed name, in the order they run in a round."""
        return {
            "baseline": self.baseline_step,
            "naive": self.naive,
            "turbo": self.turbo,
            "shared P": self.shared,
            "suffix S": self.suffix,
        }

    def backward(self, audio: torch.Tensor, text: torch.Tensor, views: int) -> None:
        """Heads, loss and backward on pooled (views·B, D) features."""
        model = self.model
        with self.autocast():
            logits = model.classifier(torch.cat([audio, text], -1))
            out = TurboOutput(logits)
            if views == 2:
                out = TurboOutput(
                    logits,
                    model.audio_proj(audio).view(2, self.batch_size, -1),
                    model.text_proj(text).view(2, self.batch_size, -1),
                    model.temperature,
                )
        objective(out, self.labels, LossWeights.from_config(self.cfg.loss))["total"].backward()

    def step_optimizer(self) -> None:
        optimizer_step(
            self.model, self.optimizer, self.scheduler, self.cfg.train.grad_clip, window=1
        )

    def baseline_step(self) -> None:
        train_step(
            self.baseline,
            self.batch,
            self.baseline_optimizer,
            self.baseline_scheduler,
            self.cfg,
            self.device,
        )

    def turbo(self) -> None:
        train_step(self.model, self.batch, self.optimizer, self.scheduler, self.cfg, self.device)

    def naive(self) -> None:
        audio_enc, text_enc, w, lengths = self.audio_enc, self.text_enc, self.w, self.lengths
        with self.autocast():
            audio = torch.cat([audio_enc(w, lengths, 1), audio_enc(w, lengths, 1)])
            text = torch.cat([text_enc(self.ids, self.mask, 1), text_enc(self.ids, self.mask, 1)])
        self.backward(audio, text, 2)
        self.step_optimizer()

    def shared(self) -> None:
        with torch.no_grad(), self.autocast():
            self.audio_enc.prefix(self.w, self.lengths)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.step_optimizer()

    def suffix(self) -> None:
        with self.autocast():
            audio = self.audio_enc.suffix(self.features, self.frames)
            text = self.text_enc(self.ids, self.mask, 1)
        self.backward(audio, text, 1)
        self.optimizer.zero_grad(set_to_none=True)


def interleaved_medians(
    variants: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each variant over `rounds` rounds (each runs every variant once, in
    order) after a warm-up round."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):  # round 0 warms up and is dropped
        for name, run in variants.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_times(
    model: TurboModel, cfg, batch_size: int, seconds: float, rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per step of each variant (see above) over `rounds` interleaved rounds after a
    warm-up round, on `device` under `cfg.train.precision`."""
    variants = StepVariants(model, cfg, batch_size, seconds, device)
    return interleaved_medians(variants.by_name(), rounds, device)


def floor(med: dict[str, float]) -> float:
    """What two views cost relative to one if duplicating the suffix costs exactly twice."""
    p, s = med["shared P"], med["suffix S"]
    return (p + 2 * s) / (p + s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base", action="store_true", help="base-sized random encoders instead of tiny"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds: a correctness check, not a measurement"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def report(med: dict[str, float], args: argparse.Namespace, rounds: int) -> None:
    """Prints each variant's time, P + S, and the ratios."""
    preset = "base-sized (random init)" if args.base else "tiny"
    print(
        f"{preset}: batch {args.batch} x {args.seconds:g} s audio + 24 tokens, "
        f"{args.threads} thread(s), "
        f"median of {rounds} interleaved rounds"
    )
    p, s = med["shared P"], med["suffix S"]
    for name, value in [*med.items(), ("P + S", p + s)]:
        print(f"  {name:10s} {1000 * value:9.1f} ms/step")
    print(f"naive/baseline: {med['naive'] / med['baseline']:.3f}")
    print(f"floor: {floor(med):.3f}")
    print(f"turbo/baseline (this project): {med['turbo'] / med['baseline']:.3f}")


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = 2 if args.quick else args.rounds

    cfg = load_config(None, ["loss.mode=turbo"])
    model = base_sized_model(cfg) if args.base else build_model(cfg, len(DEFAULT_CLASSES.names))
    med = step_times(model, cfg, args.batch, args.seconds, rounds, torch.device("cpu"))
    report(med, args, rounds)


if __name__ == "__main__":
    main()
