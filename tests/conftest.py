"""Test set-up: an isolated cache folder so tests never touch the user's cache, and few threads for speed."""
import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    old = os.environ.get("CONDENSE_CACHE")
    os.environ["CONDENSE_CACHE"] = str(tmp_path_factory.mktemp("condense-cache"))
    torch.manual_seed(0)
    yield
    if old is None:
        os.environ.pop("CONDENSE_CACHE", None)
    else:
        os.environ["CONDENSE_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread (torch and ORT sessions opened meanwhile) for a module of tiny-model tests: on a shared
    2-vCPU machine, spinning thread pools under load make them up to 100x slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
