"""One torch thread for these tiny models: on a loaded 2-vCPU machine, two threads make each step ~30x slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
