"""Test set-up: on a machine without CUDA the Triton kernels run in Triton's interpreter.

TRITON_INTERPRET must be set before gridcodes (and so its kernels) is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (``pytest -n auto``, the README's test command) each worker process gets
# one thread, so that the workers share the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from hypothesis import HealthCheck, settings

# Kernel JIT and the interpreter make example times irregular: no deadline. Examples are
# derandomized so a CI failure reproduces locally with the same seed.
settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# HYPOTHESIS_PROFILE=thorough: fresh random examples each run (see also
# GRIDCODES_EXAMPLES_SCALE in tests/helpers.py to draw more of them).
settings.register_profile("thorough", parent=settings.get_profile("default"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
