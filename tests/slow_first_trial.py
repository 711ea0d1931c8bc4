"""`turbo-ray` with each search's trial 0 sleeping before every report, so that the trials
launched after it reach its ASHA rungs first: `python tests/slow_first_trial.py tune ...`.
A test's tool (the trial function is shipped to the trial processes by value, from here)."""

import sys
import time
import unittest.mock

import ray.tune

import turbo_ray.tune
from turbo_ray.cli import main
from turbo_ray.trials import FOLD_TRIAL

SLOW_S = 4.0
real_trial = turbo_ray.tune._trial


def _trial(params: dict, **kwargs) -> None:
    """The job's trial function (named as it is: Tune resumes only the trainable it started)."""
    if params[FOLD_TRIAL] != 0:
        return real_trial(params, **kwargs)
    report = ray.tune.report

    def slow(*args, **kw):
        time.sleep(SLOW_S)
        return report(*args, **kw)

    with unittest.mock.patch.object(ray.tune, "report", slow):
        return real_trial(params, **kwargs)


if __name__ == "__main__":
    turbo_ray.tune._trial = _trial
    sys.exit(main(sys.argv[1:]))
