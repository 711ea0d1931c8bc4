"""One config over the leave-one-session-out folds of IEMOCAP (or the demo corpus).

    # ablation
    python experiments/train_iemocap.py --modes baseline,in,cross,turbo --folds 1 --seeds 0,1,2
    python experiments/train_iemocap.py --data-dir /data/IEMOCAP_full_release --preset base \
        --use-gpu --num-workers 4

Same as `turbo-ray train`; `--help` lists every flag."""

import sys

from turbo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
