"""The main job, nested leave-one-session-out: per outer fold, Ray Tune (Optuna TPE + ASHA) searches
Turbo's hyper-parameters on the other four sessions only, and the checkpoint that search selects is
tested on the held-out session.

    # embedded demo: demo corpus, tiny preset, minutes on a laptop
    python experiments/tune_iemocap.py
    python experiments/tune_iemocap.py --config experiments/configs/iemocap.yaml \
        --data-dir /data/IEMOCAP_full_release --use-gpu --num-workers 2 --address auto
    python experiments/tune_iemocap.py --resume --output-dir runs/tune-…   # after an interruption

Same as `turbo-ray tune`; `--help` lists every flag."""

import sys

from turbo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
