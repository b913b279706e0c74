import random
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so results do not depend on test order."""
    torch.manual_seed(0)
    random.seed(0)
    yield


def pytest_configure(config):
    warnings.filterwarnings("ignore", message=".*bos_token_id.*")
    warnings.filterwarnings("ignore", message=".*eos_token_id.*")
