"""models.runtime.swap.RuntimeSwap: every runner is built before any is swapped in."""
from __future__ import annotations

import threading

import pytest

import models.runtime.swap as swap


class _Insp(swap.RuntimeSwap):
    _runners = {"a": "run_a", "b": "run_b"}

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.device = "cpu"
        self.run_a = self.run_b = "torch-runner"

    def networks(self):
        return {"a": "net-a", "b": "net-b"}


def test_a_refused_runtime_changes_nothing(monkeypatch):
    def build(net, runtime, device, cache):
        if net == "net-b":
            raise RuntimeError("parity failed")
        return f"{runtime}:{net}"

    monkeypatch.setattr(swap, "build_runner", build)
    insp = _Insp()
    with pytest.raises(RuntimeError):
        insp.use_runtime("onnxruntime")
    assert (insp.run_a, insp.run_b, insp.runtime) == ("torch-runner", "torch-runner", "torch")


def test_every_network_is_swapped_when_all_build(monkeypatch):
    monkeypatch.setattr(swap, "build_runner", lambda net, runtime, device, cache: f"{runtime}:{net}")
    insp = _Insp().use_runtime("onnxruntime")
    assert (insp.run_a, insp.run_b, insp.runtime) == ("onnxruntime:net-a", "onnxruntime:net-b", "onnxruntime")
