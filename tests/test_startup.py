"""What a process imports before it works, paid again by every trial, worker and command: each
imports what it uses, not what the job's driver uses at its end."""

import json
import subprocess
import sys

# what only a job's driver uses, once its search has ended: figures, statistics, tracking
DRIVER_ONLY = ("matplotlib", "scipy", "mlflow", "sqlalchemy", "optuna.importance")


def imported(module: str, of: tuple[str, ...]) -> list[str]:
    """Which of `of` a fresh interpreter has imported after `import module`."""
    code = f"import json, sys, {module}; print(json.dumps([m for m in {of!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout)


def test_a_trial_or_training_worker_imports_nothing_only_the_driver_uses():
    # a Tune trial's process imports turbo_ray.tune, which holds the trial's function; it imports
    # the training loop, both runners, the checkpoints and the model folder (a Train worker's and
    # a prediction actor's imports)
    assert imported("turbo_ray.tune", DRIVER_ONLY) == []


def test_the_command_line_parses_before_importing_torch_or_ray():
    assert imported("turbo_ray.cli", ("torch", "ray", "transformers", "pandas")) == []
