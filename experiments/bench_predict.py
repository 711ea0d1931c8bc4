"""Prediction throughput of a model folder on the demo corpus, per CPU core: in this process (one
thread) and through Ray Data (`--actors` models side by side, one CPU each), measured in one run.
The weights are untrained (throughput does not depend on them); the corpus is predicted `--repeat`
times over in one call, the Ray Data path's actor start-up included (each call starts its pool),
after a warm-up pass (tokenizers, this process's model).

    python experiments/bench_predict.py                  # the demo corpus, 2 actors
    python experiments/bench_predict.py --actors 4 data.demo_utterances_per_speaker=12
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from turbo_ray.classifier import write_model_folder
from turbo_ray.config import load_config
from turbo_ray.data.corpus import prepare_corpus
from turbo_ray.model import build_model
from turbo_ray.predict import predict, read_inputs
from turbo_ray.progress import ray_logs_in
from turbo_ray.runtime import init_ray


def untrained_model(overrides: list[str], prefix: str):
    """A model folder of the config of `overrides`, its weights untrained (speed does not
    depend on them), in a new temporary folder: the folder, the model folder, the demo corpus's
    inputs and the config."""
    cfg = load_config(None, overrides)
    corpus = prepare_corpus(cfg.data)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    model = build_model(cfg, len(corpus.classes)).eval()
    model_dir = str(write_model_folder(model, cfg, list(corpus.classes), tmp / "model", {}))
    inputs = read_inputs(corpus.classes, cfg.data.classes, data_dir=str(corpus.root))
    return tmp, model_dir, inputs, cfg


def timed(model_dir: str, inputs, actors: int, warm_up: bool) -> float:
    """Seconds of a pass over `inputs` (the second of two with `warm_up`)."""
    if warm_up:
        predict(model_dir, inputs, actors)
    started = time.perf_counter()
    predict(model_dir, inputs, actors)
    return time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=8, help="copies of the corpus predicted")
    parser.add_argument("--quick", action="store_true", help="one pass each, no warm-up (tests)")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    tmp, model_dir, inputs, cfg = untrained_model(args.overrides, "bench_predict_")
    copies = 1 if args.quick else args.repeat
    inputs.rows = pd.concat([inputs.rows] * copies, ignore_index=True)
    n = len(inputs.rows)
    torch.set_num_threads(1)
    here = timed(model_dir, inputs, 0, not args.quick)
    with ray_logs_in(tmp / "ray.log") as log:
        print(f"Ray's own log: {log}")
        init_ray()
        on_ray = timed(model_dir, inputs, args.actors, not args.quick)
    cores = min(args.actors, os.cpu_count() or 1)
    in_process, ray_data = n / here, n / on_ray / cores
    crops = f"{cfg.data.max_seconds} s crops"
    print(f"{n} utterances ({copies} x the demo corpus), {crops}, batches of 16")
    print(f"  in process (1 thread)    {in_process:7.1f} utterances/s per core")
    print(f"  Ray Data, {args.actors} actors      {ray_data:7.1f} utterances/s per core")
    print(f"ray/in-process per core: {ray_data / in_process:.2f}")
    shutil.rmtree(tmp)  # kept only when the run fails, for its logs


if __name__ == "__main__":
    main()
