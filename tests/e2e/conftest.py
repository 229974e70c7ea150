"""End-to-end tests run the whole product on the local stack (`ops/stack up` or `make test`)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def stack_up() -> None:
    rc = subprocess.run([str(ROOT / "ops/stack"), "status", "--quiet"], cwd=ROOT).returncode
    if rc != 0:
        pytest.fail("the local stack is not running: run `ops/stack up` or `make test`", pytrace=False)
