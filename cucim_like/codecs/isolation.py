"""Decoding in child processes, for codec libraries that crash on damaged input (fpzip).

A small pool of decoder processes (:mod:`cucim_like.codecs._isolated_worker`), started on first use, one per
concurrent caller up to the number of CPUs. The compressed bytes and the decoded values pass through two
shared files per process (memfd on Linux): the parent copies the bytes in, the child decodes into the output
file, the parent copies the values out. A child that dies (SIGSEGV, SIGFPE, ...) or overruns the time limit
becomes a :class:`~cucim_like.errors.DecodeError` and is replaced on the next call; the calling process never
runs the library.
"""

from __future__ import annotations

import atexit
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

from ..errors import DecodeError

#: seconds a decode may take before its process is killed (fpzip decodes > 50 MB/s; chunks are bounded)
DECODE_TIMEOUT_S = 60.0
_WORKER_SCRIPT = str(Path(__file__).with_name("_isolated_worker.py"))
_MIN_SHARED = 1 << 20


def _shared_fd() -> int:
    """A descriptor of an anonymous shared file (memfd; an unlinked temporary file where there is none)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("cucim_like_decode", 0)
    fh = tempfile.TemporaryFile()
    fd = os.dup(fh.fileno())
    fh.close()
    return fd


class _SharedFile:
    def __init__(self) -> None:
        self.fd = _shared_fd()
        self.size = 0
        self.map: mmap.mmap | None = None
        self.dirty = 0  # bytes [0, dirty) may hold an earlier stream; the rest is zero

    def put(self, data: bytes | memoryview) -> None:
        """Write ``data`` at the start and zero what an earlier, longer stream left after it: a decoder that
        reads past the end of a damaged stream (fpzip's buffer reader has no bound) then sees zeros, the same
        on every read, never bytes of another chunk."""
        n = len(data)
        self.map[:n] = data
        if self.dirty > n:
            self.map[n : self.dirty] = bytes(self.dirty - n)
        self.dirty = n

    def ensure(self, need: int) -> None:
        if need <= self.size:
            return
        size = max(_MIN_SHARED, need, 2 * self.size)
        if self.map is not None:
            self.map.close()
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.size = size

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


class _Worker:
    """One decoder process and its two shared files."""

    def __init__(self) -> None:
        self.inp, self.out = _SharedFile(), _SharedFile()
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _WORKER_SCRIPT, str(child.fileno()), str(self.inp.fd),
                 str(self.out.fd)],
                pass_fds=(child.fileno(), self.inp.fd, self.out.fd), stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            parent.close()
            self.inp.close()
            self.out.close()
            raise DecodeError(f"cannot start a decoder process: {exc}") from exc
        finally:
            child.close()
        self.sock = parent
        self.conn = Connection(os.dup(parent.fileno()))
        self.closed = False

    def call(self, codec: str, library: str, data: bytes | memoryview, out_nbytes: int, params: tuple,
             timeout: float) -> memoryview:
        n = len(data)
        self.inp.ensure(n + 16)  # never zero-sized
        self.out.ensure(out_nbytes + 16)
        self.inp.put(data)
        try:
            self.conn.send((codec, library, n, self.inp.size, self.out.size, params))
            ready = self.conn.poll(timeout)
            reply = self.conn.recv() if ready else None
        except (EOFError, OSError):
            reply = None
            ready = True
        if reply is None:
            self.kill()
            if not ready:
                raise DecodeError(f"{codec} decode did not finish within {timeout:.0f} s")
            raise DecodeError(f"{codec} decoder process died ({_describe(self.proc.returncode)}) on this "
                              "stream: the data is damaged")
        status, detail = reply
        if status != "ok":
            raise DecodeError(str(detail))
        return memoryview(self.out.map)[:out_nbytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that does not end a process
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for thing in (self.conn, self.sock):
            try:
                thing.close()
            except OSError:
                pass
        self.inp.close()
        self.out.close()


def _describe(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class IsolatedDecoders:
    """A pool of decoder processes, grown on demand up to ``size``; one caller per process at a time."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self.started = 0  # processes started so far (tests and benchmarks read it)

    @contextmanager
    def decode(self, codec: str, library: str, data: bytes | memoryview, out_nbytes: int, params: tuple,
               timeout: float | None = None) -> Iterator[memoryview]:
        """Decode ``data`` in a child process; yields a view of the ``out_nbytes`` decoded bytes, valid inside
        the ``with`` block only. DecodeError when the library refuses the stream or its process dies."""
        worker = self._acquire()
        keep = False
        try:
            view = worker.call(codec, library, data, out_nbytes, params, timeout or DECODE_TIMEOUT_S)
            keep = True
            try:
                yield view
            finally:
                view.release()
        except DecodeError:
            keep = worker.alive
            raise
        finally:
            self._release(worker, keep)

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            worker = _Worker()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        self.started += 1
        return worker

    def _release(self, worker: _Worker, keep: bool) -> None:
        if not keep:
            if worker.alive:
                worker.kill()
            else:
                worker.close()
        with self._cond:
            if keep:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle processes (busy ones stop when their caller releases them)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for worker in idle:
            worker.kill()


_pool: IsolatedDecoders | None = None
_pool_lock = threading.Lock()


def decoder_pool() -> IsolatedDecoders:
    """The process-wide pool (a fresh one in a forked child: processes are not shared across fork)."""
    global _pool
    pool = _pool
    if pool is None or pool._pid != os.getpid():
        with _pool_lock:
            if _pool is None or _pool._pid != os.getpid():
                from ..executors.pool import default_workers

                _pool = IsolatedDecoders(default_workers())
            pool = _pool
    return pool


@atexit.register
def _shutdown() -> None:
    if _pool is not None and _pool._pid == os.getpid():
        _pool.close()
