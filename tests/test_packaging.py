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


def test_native_tile_pool_is_built_where_its_loader_looks():
    """setup.py builds ``cucim_like.executors._tilepool`` from the C source beside the module that loads it,
    as an optional extension (installs without a compiler)."""
    import ast

    calls = [n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "Extension"]
    assert len(calls) == 1
    ext = calls[0]
    assert ast.literal_eval(ext.args[0]) == "cucim_like.executors._tilepool"
    kwargs = {k.arg: ast.literal_eval(k.value) for k in ext.keywords}
    assert kwargs["optional"] is True
    assert kwargs["sources"] == ["cucim_like/executors/_tilepool.c"]
    assert (ROOT / kwargs["sources"][0]).is_file()
    from cucim_like.executors import native

    assert ast.literal_eval(ext.args[0]) == f"{native.__package__}.{native.LIBRARY_NAME}"
