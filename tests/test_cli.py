"""The ``cucim-like`` command line: info and read on a slide and on a DICOM volume, typed errors as exit 1."""

from __future__ import annotations

import json

import numpy as np

from cucim_like import cli
from tests.formats import dicom_fixtures as dfx


def test_info_and_read_a_dicom_volume(tmp_path, capsys):
    fx = dfx.write_volume_series(tmp_path / "ct", shape=(4, 20, 16))
    assert cli.main(["info", str(tmp_path / "ct")]) == 0
    text = capsys.readouterr().out
    assert "dicom (dicom-volume)" in text and "[4, 20, 16] ZYX" in text
    assert cli.main(["info", "--json", str(tmp_path / "ct")]) == 0
    assert json.loads(capsys.readouterr().out)["cucim"]["dims"] == "ZYX"
    out = tmp_path / "part.npy"
    assert cli.main(["read", str(tmp_path / "ct"), "--location", "3", "2", "1", "--size", "5", "6", "2",
                     "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), fx.volume[1:3, 2:8, 3:8])
    whole = tmp_path / "whole.npy"
    assert cli.main(["read", str(tmp_path / "ct"), "-o", str(whole)]) == 0
    np.testing.assert_array_equal(np.load(whole), fx.volume)


def test_read_errors_are_reported_not_raised(tmp_path, capsys):
    dfx.write_volume_series(tmp_path / "ct", shape=(3, 8, 8))
    code = cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "--size", "4", "4",
                     "-o", str(tmp_path / "x.npy")])
    assert code == 1
    assert "InvalidArgumentError" in capsys.readouterr().err
    assert cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "0", "-o", str(tmp_path / "x.npy")]) == 2
