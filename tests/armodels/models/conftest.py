import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models gain nothing from threads; on a busy machine, threads waiting on each other cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
