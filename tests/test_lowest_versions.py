"""The lower bounds of pyproject.toml's dependencies are exactly the pins that `make test-lowest` tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lowest_pins_equal_the_declared_lower_bounds():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", dep.replace(" ", ""))
        assert m, f"{dep!r}: a core dependency is declared as name>=version (its tested lowest version)"
        declared[_norm(m[1])] = m[2]
    pinned = {}
    for line in (ROOT / ".ci" / "lowest-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", line.replace(" ", ""))
            assert m, f"{line!r}: .ci/lowest-versions.txt pins name==version"
            pinned[_norm(m[1])] = m[2]
    assert pinned == declared
