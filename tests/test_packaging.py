"""The wheel's package list (pyproject.toml) names every package of the source tree, and the CUDA sources of
the top-level kernels/ folder ship as ``cucim_like.kernels``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setuptools_config():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_listed(setuptools_config):
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cucim_like").rglob("__init__.py")}
    listed = set(setuptools_config["packages"])
    assert found | {"cucim_like.kernels"} == listed


def test_kernels_ship_from_the_top_level_folder(setuptools_config):
    assert setuptools_config["package-dir"]["cucim_like.kernels"] == "kernels"
    assert setuptools_config["package-data"]["cucim_like.kernels"] == ["*.cu"]
    assert list((ROOT / "kernels").glob("*.cu")), "kernels/ holds the CUDA sources"
