"""`python -m turbo_ray.cli`: the `turbo-ray` command."""

import sys

from turbo_ray.cli import main

sys.exit(main())
