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


def step_times(
    model: TurboModel, cfg, batch_size: int, seconds: float, rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per step of each variant (see above) over `rounds` interleaved rounds after a
    warm-up round, on `device` under `cfg.train.precision`."""
    model = model.train().to(device)
    audio_enc, text_enc = model.audio_encoder, model.text_encoder
    baseline = TurboModel(
        audio_enc,
        text_enc,
        num_classes=4,
        proj_dim=cfg.model.proj_dim,
        head_hidden=cfg.model.head_hidden,
        contrastive=False,
    ).train()
    baseline.to(device)
    batch = make_batch(batch_size, seconds, 24, text_enc.model.config.vocab_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    w, lengths, ids, mask, labels = (
        batch[k] for k in ("waveforms", "audio_lengths", "input_ids", "attention_mask", "labels")
    )
    autocast = functools.partial(forward_precision, cfg.train.precision, device)
    with torch.no_grad(), autocast():
        features, frames = audio_enc.prefix(w, lengths)

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps=10_000)
    baseline_optimizer = build_optimizer(baseline, cfg)
    baseline_scheduler = build_scheduler(baseline_optimizer, cfg, steps=10_000)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [
        torch.zeros_like(p) for p in params
    ]  # what the optimizer steps on when P is timed alone

    def backward(audio: torch.Tensor, text: torch.Tensor, views: int) -> None:
        """Heads, loss and backward on pooled (views·B, D) features."""
        with autocast():
            logits = model.classifier(torch.cat([audio, text], -1))
            out = TurboOutput(logits)
            if views == 2:
                out = TurboOutput(
                    logits,
                    model.audio_proj(audio).view(2, batch_size, -1),
                    model.text_proj(text).view(2, batch_size, -1),
                    model.temperature,
                )
        objective(out, labels, LossWeights.from_config(cfg.loss))["total"].backward()

    def step(audio: torch.Tensor, text: torch.Tensor, views: int) -> None:
        backward(audio, text, views)
        optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip, window=1)

    def naive() -> None:
        with autocast():
            audio = torch.cat([audio_enc(w, lengths, 1), audio_enc(w, lengths, 1)])
            text = torch.cat([text_enc(ids, mask, 1), text_enc(ids, mask, 1)])
        step(audio, text, 2)

    def shared() -> None:
        with torch.no_grad(), autocast():
            audio_enc.prefix(w, lengths)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip, window=1)

    def suffix() -> None:
        with autocast():
            audio, text = audio_enc.suffix(features, frames), text_enc(ids, mask, 1)
        backward(audio, text, 1)
        optimizer.zero_grad(set_to_none=True)

    variants = {
        "baseline": lambda: train_step(
            baseline, batch, baseline_optimizer, baseline_scheduler, cfg, device
        ),
        "naive": naive,
        "turbo": lambda: train_step(model, batch, optimizer, scheduler, cfg, device),
        "shared P": shared,
        "suffix S": suffix,
    }
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


def floor(med: dict[str, float]) -> float:
    """What two views cost relative to one if duplicating the suffix costs exactly twice."""
    p, s = med["shared P"], med["suffix S"]
    return (p + 2 * s) / (p + s)


def main() -> None:
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = 2 if args.quick else args.rounds

    cfg = load_config(None, ["loss.mode=turbo"])
    model = base_sized_model(cfg) if args.base else build_model(cfg, len(DEFAULT_CLASSES.names))
    med = step_times(model, cfg, args.batch, args.seconds, rounds, torch.device("cpu"))

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


if __name__ == "__main__":
    main()
