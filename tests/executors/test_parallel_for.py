"""parallel_for: every item once, the first error raised after all threads stopped, cancellation, progress."""

from __future__ import annotations

import threading
import time

import pytest

from cucim_like.executors.cpu import parallel_for


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_every_item_once_and_progress(workers):
    seen, lock, progress = [], threading.Lock(), []

    def fn(item):
        with lock:
            seen.append(item)
        return 2

    parallel_for(list(range(100)), fn, workers, progress.append)
    assert sorted(seen) == list(range(100))
    assert sum(progress) == 200


def test_first_error_raised_after_running_items_finish():
    finished = []

    def fn(item):
        if item == 3:
            raise ValueError("bad item")
        time.sleep(0.01)
        finished.append(item)
        return 1

    with pytest.raises(ValueError, match="bad item"):
        parallel_for(list(range(50)), fn, 2, None)
    count = len(finished)
    time.sleep(0.05)
    assert len(finished) == count  # nothing still running after the call returned
    assert count < 50  # the remaining items were skipped


def test_cancel_skips_remaining_items():
    cancel = threading.Event()
    done = []

    def fn(item):
        done.append(item)
        if item == 5:
            cancel.set()
        return 1

    parallel_for(list(range(1000)), fn, 2, None, cancel)
    assert len(done) < 20
