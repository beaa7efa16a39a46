"""The examples run: the slide tour, and the PyTorch training loop when torch is installed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cucim_like.sample import tissue

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so DataLoader workers can pickle the dataset's class
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("ex") / "tissue.tif"
    img = tissue(1536, 1024, seed=3)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb")
        tw.write(img[::4, ::4].copy(), tile=(256, 256), compression="jpeg", photometric="rgb")
    return path


def test_read_slide_example(tissue_slide, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["read_slide.py", str(tissue_slide)])
    _load("read_slide").main()
    out = capsys.readouterr().out
    assert "region: (512, 512, 3) uint8" in out
    assert np.load(tmp_path / "region.npy").shape == (512, 512, 3)


def test_train_patches_runs_a_few_steps(tissue_slide):
    pytest.importorskip("torch")
    result = _load("train_patches").main([str(tissue_slide), "--steps", "4", "--workers", "2", "--batch", "8",
                                          "--size", "128"])
    assert result["steps"] == 4 and result["patches"] == 32
    assert all(math.isfinite(v) for v in result["losses"])
