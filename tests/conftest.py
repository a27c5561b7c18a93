import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent  # noqa: E402, F401, I001  (first: OpenMP's passive wait is set before torch loads)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _few_threads():
    # Under pytest-xdist (-n 2) two workers share the 2 cores: one torch thread each, or they spin
    # against each other (OpenMP's busy wait).
    torch.set_num_threads(1 if "PYTEST_XDIST_WORKER" in os.environ else 2)
