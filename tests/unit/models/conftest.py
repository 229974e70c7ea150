"""Keep torch to one thread in the model tests: the CI box (and dev boxes) are shared.

`severity_dir`: a copy of the packaged synthetic severity checkpoints, one per test module."""
import shutil
from pathlib import Path

import pytest
import torch

from models.families.severity.inspector import DEFAULT_CHECKPOINT_DIR


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def severity_dir(tmp_path_factory) -> Path:
    """A copy of the packaged synthetic checkpoints (exports must not land in the repository)."""
    d = tmp_path_factory.mktemp("severity")
    for p in DEFAULT_CHECKPOINT_DIR.iterdir():
        if p.suffix in (".pt", ".json"):
            shutil.copy(p, d / p.name)
    return d
