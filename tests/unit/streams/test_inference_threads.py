"""The worker's model threads follow the cores the process may use (issue 23), or `model.threads`."""
from __future__ import annotations

import os

import pytest
import torch

from streams.inspection.inference import InferenceRunner
from streams.settings import ModelSettings


def test_threads_default_to_the_cores_of_the_process_affinity_less_one():
    assert ModelSettings().resolve_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    assert ModelSettings(threads=3).resolve_threads() == 3
    with pytest.raises(ValueError):
        ModelSettings(threads=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_runner_sets_the_model_threads_before_it_loads(threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(5 if threads != 5 else 4)
        runner = InferenceRunner(ModelSettings(threads=threads, device="cpu", runtime="torch"))
        insp = runner._load()
        assert insp is not None and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
