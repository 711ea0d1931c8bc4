"""`turbo-ray` with one trial of each search perturbed, a test's tool:

    python tests/perturbed_trials.py slow 0 tune ...   # trial 0 sleeps before every report, so
                                                       # later trials reach its ASHA rungs first
    python tests/perturbed_trials.py fail 1 tune ...   # trial 1 fails before it trains

The trial function is shipped to the trial processes by value, from here."""

import sys
import time
import unittest.mock

import ray.tune

import turbo_ray.tune
from turbo_ray.cli import main
from turbo_ray.trials import FOLD_TRIAL

SLOW_S = 4.0
real_trial = turbo_ray.tune._trial
how, which = sys.argv[1], int(sys.argv[2])  # read here: the values travel with the function


def _trial(params: dict, **kwargs) -> None:
    """The job's trial function (named as it is: Tune resumes only the trainable it started)."""
    if params[FOLD_TRIAL] != which:
        return real_trial(params, **kwargs)
    if how == "fail":
        raise RuntimeError(f"trial {which} fails, as tests/perturbed_trials.py was told")
    report = ray.tune.report

    def slow(*args, **kw):
        time.sleep(SLOW_S)
        return report(*args, **kw)

    with unittest.mock.patch.object(ray.tune, "report", slow):
        return real_trial(params, **kwargs)


if __name__ == "__main__":
    turbo_ray.tune._trial = _trial
    sys.exit(main(sys.argv[3:]))
