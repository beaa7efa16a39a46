"""The kvikio range reader's bookkeeping (with a stand-in for kvikio: the real one needs libcuda) and the
CUDA path's settings."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

import cucim_like
from cucim_like.cuda import io
from cucim_like.plan import ByteRange


class _Future:
    def __init__(self, n: int) -> None:
        self.n = n

    def get(self) -> int:
        return self.n


class _FakeCuFile:
    """kvikio.CuFile over os.pread; ``short`` bytes are withheld from every read."""

    short = 0
    opened: list[str] = []

    def __init__(self, path: str, flags: str = "r") -> None:
        self.fd = os.open(path, os.O_RDONLY)
        _FakeCuFile.opened.append(path)

    def pread(self, buf: np.ndarray, size: int, file_offset: int = 0) -> _Future:
        data = os.pread(self.fd, size - self.short, file_offset)
        buf[: len(data)] = np.frombuffer(data, np.uint8)
        return _Future(len(data))

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fake_kvikio(monkeypatch):
    settings: dict = {}
    defaults = types.SimpleNamespace(set=lambda d: settings.update(d))
    module = types.SimpleNamespace(CuFile=_FakeCuFile, defaults=defaults)
    monkeypatch.setitem(sys.modules, "kvikio", module)
    monkeypatch.setitem(sys.modules, "kvikio.defaults", defaults)
    monkeypatch.setattr(io, "pinned_buffer", lambda n: np.empty(n, np.uint8))
    monkeypatch.setattr(io, "_configured", [])
    monkeypatch.setattr(_FakeCuFile, "short", 0)
    io.close_all()
    yield settings
    io.close_all()


def test_ranges_land_in_one_buffer_in_order(tmp_path, fake_kvikio):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(256)) * 40)
    b.write_bytes(bytes(range(255, -1, -1)) * 40)
    ranges = [ByteRange(0, 10, 300, (1, 2)), ByteRange(1, 5000, 5100, (7,)), ByteRange(0, 9000, 10240, (9,))]
    views = io.read_ranges_kvikio([str(a), str(b)], ranges, threads=3)
    assert fake_kvikio == {"num_threads": 3}
    for view, r in zip(views, ranges, strict=True):
        source = (a if r.file_id == 0 else b).read_bytes()
        assert bytes(view) == source[r.start : r.stop]
    io.read_ranges_kvikio([str(a), str(b)], ranges[:1], threads=3)
    assert sorted(_FakeCuFile.opened[-2:]) == [str(a), str(b)]  # handles are reused, not reopened


def test_short_read_is_a_file_access_error(tmp_path, fake_kvikio, monkeypatch):
    path = tmp_path / "c.bin"
    path.write_bytes(bytes(1000))
    monkeypatch.setattr(_FakeCuFile, "short", 1)
    with pytest.raises(cucim_like.FileAccessError, match="short read") as info:
        io.read_ranges_kvikio([str(path)], [ByteRange(0, 100, 200, (0,))])
    assert info.value.path == str(path) and isinstance(info.value, OSError)


def test_missing_kvikio_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "kvikio", None)
    with pytest.raises(cucim_like.DeviceUnavailableError, match="kvikio-cu13"):
        io.configure_threads(2)


def test_configure_validates_and_reports(monkeypatch):
    monkeypatch.setattr(cucim_like.cuda, "OPTIONS", dict(cucim_like.cuda.OPTIONS))
    assert cucim_like.cuda.configure(io_threads=8, wave_tiles=64, decoder="hw") == {
        "io_threads": 8, "wave_tiles": 64, "decoder": "hw"}
    for bad in ({"io_threads": 0}, {"wave_tiles": -1}, {"decoder": "cpu"}):
        with pytest.raises(cucim_like.InvalidArgumentError):
            cucim_like.cuda.configure(**bad)
    assert cucim_like.cuda.configure()["wave_tiles"] == 64
