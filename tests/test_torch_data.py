"""PatchBatches: batches through a DataLoader's worker processes and reused shared-memory slots, checked against
tifffile's decode of the same level."""

from __future__ import annotations

import gc
import glob
import os
import pickle
import sys

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

import cucim_like  # noqa: E402
from cucim_like import torch_data  # noqa: E402
from cucim_like.torch_data import PatchBatches  # noqa: E402

SIZE = (48, 40)  # (w, h)
needs_dev_shm = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="slots live in /dev/shm")


def _locations(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 700 - SIZE[0], n), rng.integers(0, 500 - SIZE[1], n)], axis=1)


def _expected(level0: np.ndarray, locs: np.ndarray) -> np.ndarray:
    w, h = SIZE
    return np.stack([level0[y : y + h, x : x + w] for x, y in locs.tolist()])


def _segments() -> set[str]:
    return set(glob.glob("/dev/shm/cucim_like_batches_*"))


@needs_dev_shm
def test_batches_from_two_workers_equal_tifffile_and_all_come_through_slots(small_slide):
    path, _ = small_slide
    level0 = tifffile.imread(path, key=0)
    locs = _locations(45)
    before, segments, mapped = torch_data.stats["slot_batches"], _segments(), set(torch_data._attached)
    ds = PatchBatches(path, locs, SIZE, batch_size=8, slots=8)  # enough slots for every batch a worker makes
    held = list(DataLoader(ds, batch_size=None, num_workers=2))  # all held at once: no slot may be reused
    assert len(held) == len(ds) == 6 and [len(b) for b in held] == [8] * 5 + [5]
    np.testing.assert_array_equal(torch.cat(held).numpy(), _expected(level0, locs))
    assert torch_data.stats["slot_batches"] - before == 6
    assert all(b.dtype == torch.uint8 and b.shape[1:] == (SIZE[1], SIZE[0], 3) for b in held)
    assert _segments() <= segments  # each segment's name is removed once the main process has mapped it
    attached = set(torch_data._attached) - mapped
    assert len(attached) == 2  # the workers' segments, mapped here while their batches live
    del held
    gc.collect()
    assert not attached & set(torch_data._attached)  # the workers have exited: their segments are forgotten


@needs_dev_shm
def test_segments_are_unmapped_once_the_workers_are_gone_and_no_batch_is_held(small_slide):
    path, _ = small_slide
    mapped = set(torch_data._attached)
    for batch in DataLoader(PatchBatches(path, _locations(64, seed=11), SIZE, batch_size=8, slots=4),
                            batch_size=None, num_workers=2):
        assert len(batch) == 8  # each batch dropped when the next arrives
    del batch
    gc.collect()
    assert set(torch_data._attached) <= mapped


@needs_dev_shm
def test_one_sample_16_bit_slides_come_through_slots(tmp_path):
    """The slot shape and dtype come from the image's metadata: (B, h, w, 1) uint16 here."""
    level0 = np.random.default_rng(12).integers(0, 65536, (200, 300), dtype=np.uint16)
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, level0, tile=(64, 64), compression="zlib")
    locs = np.array([[5, 7], [100, 60], [250, 150], [0, 0], [17, 130]])
    before = torch_data.stats["slot_batches"]
    got = list(DataLoader(PatchBatches(path, locs, SIZE, batch_size=2), batch_size=None, num_workers=2))
    assert torch_data.stats["slot_batches"] - before == 3 and all(b.dtype == torch.uint16 for b in got)
    want = np.stack([level0[y : y + SIZE[1], x : x + SIZE[0], None] for x, y in locs.tolist()])
    np.testing.assert_array_equal(torch.cat(got).numpy(), want)


@needs_dev_shm
def test_a_consumer_holding_more_batches_than_slots_gets_the_rest_the_ordinary_way(small_slide):
    path, _ = small_slide
    level0 = tifffile.imread(path, key=0)
    locs = _locations(64, seed=4)
    before = torch_data.stats["slot_batches"]
    held = list(DataLoader(PatchBatches(path, locs, SIZE, batch_size=4, slots=1), batch_size=None,
                           num_workers=2))
    np.testing.assert_array_equal(torch.cat(held).numpy(), _expected(level0, locs))
    assert torch_data.stats["slot_batches"] - before == 2  # one slot per worker, never freed while held


@needs_dev_shm
def test_a_slot_is_free_again_once_its_tensor_and_views_are_gone(small_slide):
    """The hand-over, in one process: a batch pickled as its slot comes back as a tensor over the slot."""
    slots = torch_data._Slots(2, 4 * 10 * 10 * 3)
    batches = [np.full((4, 10, 10, 3), i, np.uint8) for i in range(3)]
    sent = [slots.hand_over(b) for b in batches[:2]]
    assert slots.hand_over(batches[2]) is None  # both slots held
    received = [pickle.loads(pickle.dumps(s)) for s in sent]
    assert not os.path.exists(f"/dev/shm/{slots.name}")  # mapped here: its name is gone
    for i, t in enumerate(received):
        assert isinstance(t, torch.Tensor) and t.shape == (4, 10, 10, 3) and int(t.min()) == int(t.max()) == i
    view = received[0][1:3]
    del received[0]
    gc.collect()
    assert slots.hand_over(batches[2]) is None  # a view still holds slot 0
    del view
    gc.collect()
    third = pickle.loads(pickle.dumps(slots.hand_over(batches[2])))
    assert int(third.min()) == int(third.max()) == 2 and int(received[0].max()) == 1
    assert slots.hand_over(np.zeros((5, 10, 10, 3), np.uint8)) is None  # larger than a slot


def test_without_workers_batches_are_plain_tensors(small_slide):
    path, _ = small_slide
    locs = _locations(10, seed=5)
    before = torch_data.stats["slot_batches"]
    got = list(DataLoader(PatchBatches(path, locs, SIZE, batch_size=4, shuffle=True, seed=2), batch_size=None))
    order = np.random.default_rng(2).permutation(len(locs))
    np.testing.assert_array_equal(torch.cat(got).numpy(), _expected(tifffile.imread(path, key=0), locs[order]))
    assert torch_data.stats["slot_batches"] == before


@needs_dev_shm
def test_breaking_off_leaves_no_segment_behind(small_slide):
    path, _ = small_slide
    segments = _segments()
    loader = DataLoader(PatchBatches(path, _locations(200, seed=6), SIZE, batch_size=4), batch_size=None,
                        num_workers=2)
    for _batch in loader:  # the other worker's first batch, in a slot, is never received
        break
    del loader, _batch
    gc.collect()
    assert _segments() <= segments


@needs_dev_shm
def test_segments_of_killed_workers_are_removed_by_the_next_dataset(small_slide):
    """Only segments of this PID namespace whose worker is gone: containers sharing /dev/shm see other PIDs."""
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ns = torch_data._pid_namespace()
    names = {"stale": f"{ns}_{gone.pid}_test", "live": f"{ns}_{os.getpid()}_test",
             "other namespace": f"{ns}1_{gone.pid}_test", "not ours": f"{gone.pid}_test"}
    paths = {k: f"/dev/shm/cucim_like_batches_{v}" for k, v in names.items()}
    for path in paths.values():
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        PatchBatches(small_slide[0], _locations(2), SIZE)
        assert {k for k, p in paths.items() if os.path.exists(p)} == {"live", "other namespace", "not ours"}
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)


def test_a_batch_whose_slots_are_gone_is_a_typed_error():
    with pytest.raises(cucim_like.CucimLikeError, match="slots of a DataLoader worker are gone"):
        torch_data._receive(f"{torch_data._PREFIX}0_1_gone", 8192, 1, 0, 4096, (1, 2, 2, 3), "|u1")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_one_patch_batches_and_a_worker_with_a_single_location(small_slide, workers):
    path, _ = small_slide
    level0 = tifffile.imread(path, key=0)
    for n in (1, 3):
        locs = _locations(n, seed=9)
        got = list(DataLoader(PatchBatches(path, locs, SIZE, batch_size=1), batch_size=None, num_workers=workers))
        assert [tuple(b.shape) for b in got] == [(1, SIZE[1], SIZE[0], 3)] * n
        np.testing.assert_array_equal(torch.cat(got).numpy(), _expected(level0, locs))


@needs_dev_shm
def test_batches_transformed_inside_the_workers_are_sent_as_what_they_became(small_slide):
    """A collate_fn, batching of batches, or a wrapping dataset sees tensors; what they make goes the ordinary
    way, and the slots they came from are freed."""
    path, _ = small_slide
    locs = _locations(40, seed=10)
    want = torch.from_numpy(_expected(tifffile.imread(path, key=0), locs))
    ds = PatchBatches(path, locs, SIZE, batch_size=4, slots=2)
    permuted = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda b: b.permute(0, 3, 1, 2)))
    assert all(type(b) is torch.Tensor for b in permuted)
    torch.testing.assert_close(torch.cat(permuted), want.permute(0, 3, 1, 2), rtol=0, atol=0)
    pairs = list(DataLoader(ds, batch_size=2, num_workers=2))  # each worker's 5 batches, stacked by two
    assert sorted(tuple(p.shape[:2]) for p in pairs) == [(1, 4)] * 2 + [(2, 4)] * 4
    assert all(type(p) is torch.Tensor for p in pairs) and sum(p.shape[0] * p.shape[1] for p in pairs) == 40
    before = torch_data.stats["slot_batches"]
    plain = list(DataLoader(ds, batch_size=None, num_workers=2))  # the slots were freed: used again
    torch.testing.assert_close(torch.cat(plain), want, rtol=0, atol=0)
    assert torch_data.stats["slot_batches"] - before >= 2


@needs_dev_shm
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_copy_of_a_held_batch_frees_nothing():
    slots = torch_data._Slots(1, 4 * 2 * 2 * 3)
    held = pickle.loads(pickle.dumps(slots.hand_over(np.full((4, 2, 2, 3), 5, np.uint8))))
    assert int(slots.states[0]) == 1
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the tensor
        del held
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    assert int(slots.states[0]) == 1 and slots.hand_over(np.zeros((4, 2, 2, 3), np.uint8)) is None
    assert int(held.max()) == 5
    del held
    gc.collect()
    assert int(slots.states[0]) == 0


@needs_dev_shm
@pytest.mark.skipif(sys.platform != "linux", reason="spawned workers re-import torch: slow, checked on Linux")
def test_spawned_workers(small_slide):
    path, _ = small_slide
    locs = _locations(12, seed=8)
    got = list(DataLoader(PatchBatches(path, locs, SIZE, batch_size=4, slots=4), batch_size=None,
                          num_workers=2, multiprocessing_context="spawn"))
    np.testing.assert_array_equal(torch.cat(got).numpy(), _expected(tifffile.imread(path, key=0), locs))


@pytest.mark.parametrize("kwargs", [
    {"locations": np.empty((0, 2), np.int64)},
    {"locations": [[1, 2, 3]]},
    {"size": (0, 10)},
    {"size": (701, 10)},
    {"batch_size": 0},
    {"num_threads": -1},
    {"prefetch_factor": -1},
    {"level": 5},
    {"slots": 0},
    {"slots": 1.5},
])
def test_arguments_are_checked_in_the_calling_process(small_slide, kwargs):
    path, _ = small_slide
    args = {"locations": _locations(4), "size": SIZE, **kwargs}
    with pytest.raises(cucim_like.InvalidArgumentError):
        PatchBatches(path, args.pop("locations"), args.pop("size"), **args)


def test_worker_threads_share_out_the_cpus_unless_given(small_slide, monkeypatch):
    path, _ = small_slide
    monkeypatch.setattr(torch_data, "default_workers", lambda: 8)
    auto = PatchBatches(path, _locations(4), SIZE)
    assert [auto.threads(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert PatchBatches(path, _locations(4), SIZE, num_threads=3).threads(2) == 3
