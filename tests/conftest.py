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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to other processes holding the second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    warnings.filterwarnings("ignore", message=".*bos_token_id.*")
    warnings.filterwarnings("ignore", message=".*eos_token_id.*")
