import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(autouse=True)
def _few_threads():
    # Under pytest-xdist (-n 2) two workers share the 2 cores: one torch thread each, or they spin
    # against each other (OpenMP's busy wait).
    torch.set_num_threads(1 if "PYTEST_XDIST_WORKER" in os.environ else 2)
