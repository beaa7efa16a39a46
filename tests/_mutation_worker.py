"""Runs cucim_like on damaged files in a child process, so that a crash, an abort or a hang is seen as one.

Two halves:

* ``run_jobs(jobs, workdir)`` (imported by the tests) starts ``python _mutation_worker.py JOBS START HEADROOM``
  and follows it line by line. A job that never reports back within ``job_timeout`` seconds is a hang; a
  worker that dies in the middle of a job names that job as the crash's culprit. Either way the worker is
  restarted at the next job, so one bad file never hides the outcome of the others.
* ``main()`` (the child) caps its address space at what it uses after start-up plus ``HEADROOM`` MiB
  (``RLIMIT_AS``), so an allocation sized by a damaged header fails loudly as a MemoryError instead of
  quietly succeeding on a large machine, then runs each job and prints one JSON line per job.

A job is ``{"path": str, "ops": list | None}``. Ops (all optional, in order, after the open):
``["region", x, y, w, h, level, workers]``, ``["level", index, workers]`` (whole level, -1 = smallest),
``["assoc"]`` (every associated image up to 256 MB), ``["associated", name]`` (that one, whatever its size),
``["meta"]`` (metadata and resolutions), ``["nocache"]`` (later ops without a tile cache), and for testing the harness
itself ``["selftest-abort"]``, ``["selftest-sleep", s]``, ``["selftest-raise"]``. ``"ops": None`` means the
default set for mutants: metadata, four regions, the whole smallest level, the associated images, then two
regions without a cache.

Each op's outcome is ``{"op": ..., "ok": true}`` or ``{"op": ..., "exc": class name, "typed": bool,
"path"/"level"/"tile": the error's fields, "msg": str}``; a job also reports the growth of the peak resident
set size (``rss_growth_kb``) while it ran.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Outputs larger than this are not requested by the default ops (they would measure the test, not the reader).
MAX_DEFAULT_OUTPUT = 256 << 20


# -- parent side --------------------------------------------------------------------------------------------
def run_jobs(jobs: list[dict], workdir: Path, *, job_timeout: float = 20.0, startup_timeout: float = 60.0,
             headroom_mb: int = 2560) -> list[dict]:
    """Run ``jobs`` in worker processes; one result per job: the worker's report, or a crash/hang record."""
    workdir.mkdir(parents=True, exist_ok=True)
    jobs_file = workdir / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # Keep the child's address space small and predictable so that RLIMIT_AS measures the reader.
    env.update(MALLOC_ARENA_MAX="2", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    results: list[dict | None] = [None] * len(jobs)
    start = 0
    while start < len(jobs):
        start = _run_worker(jobs_file, start, len(jobs), results, workdir, env, job_timeout, startup_timeout,
                            headroom_mb)
    return results  # type: ignore[return-value]


def _run_worker(jobs_file: Path, start: int, total: int, results: list, workdir: Path, env: dict,
                job_timeout: float, startup_timeout: float, headroom_mb: int) -> int:
    """One worker from job ``start``; returns where the next worker must start (``total`` when finished)."""
    err_path = workdir / f"worker-{start}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(jobs_file), str(start), str(headroom_mb)],
            stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(workdir),
        )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    pending = b""
    current: int | None = None
    ready = False
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError(f"worker did not start or stalled between jobs: {_tail(err_path)}")
                results[current] = {"status": "hang", "timeout_s": job_timeout, "stderr": _tail(err_path)}
                return current + 1
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker exited
                rc = proc.wait()
                if current is not None:
                    results[current] = {"status": "crash", "returncode": rc, "stderr": _tail(err_path)}
                    return current + 1
                if ready and all(r is not None for r in results[start:]):
                    return total
                raise RuntimeError(f"worker exited with {rc} outside a job: {_tail(err_path)}")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                if kind == "@@ready":
                    ready = True
                elif kind == "@@start":
                    current = int(rest)
                elif kind == "@@done":
                    index, _, payload = rest.partition(" ")
                    results[int(index)] = {"status": "done", **json.loads(payload)}
                    current = None
                else:
                    continue
                deadline = time.monotonic() + job_timeout
    finally:
        sel.close()
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""



def review(mutants: list[dict], results: list[dict],
           ) -> tuple[list[str], collections.Counter, dict, collections.Counter]:
    """Judge mutant runs: (problems, first outcome counts, those per source, typed errors not naming the
    mutant's path). A problem is a crash, a hang, an untyped error or a file changed on disk. Each mutant is
    ``{"path", "source", "what", "identity"}`` with ``identity`` from :func:`file_state`."""
    problems: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    by_source: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    without_path: collections.Counter[str] = collections.Counter()
    for m, r in zip(mutants, results, strict=True):
        path = Path(m["path"])
        label = f"{path.parent.name}/{path.name} ({m['what']})"
        if r["status"] != "done":
            problems.append(f"{label}: {r['status']} {r.get('returncode', '')} {r.get('stderr', '')[-600:]}")
            outcomes[r["status"]] += 1
            continue
        first = "success"
        for o in r["outcomes"]:
            if "exc" not in o:
                continue
            if not o["typed"]:
                problems.append(f"{label}: {o['op']} raised {o['module']}.{o['exc']}: {o['msg']}")
            elif o["path"] != m["path"] and o["exc"] != "InvalidArgumentError":
                without_path[o["exc"]] += 1
            if first == "success":
                first = o["exc"]
        if file_state(path) != tuple(m["identity"]):
            problems.append(f"{label}: the file on disk changed")
        outcomes[first] += 1
        by_source[m["source"]][first] += 1
    return problems, outcomes, by_source, without_path


def file_state(path: Path) -> tuple[str, int, int]:
    """(sha256, size, mtime) of a file: tells whether reading it changed it."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns

# -- child side ---------------------------------------------------------------------------------------------
def _cap_address_space(headroom_mb: int) -> None:
    """RLIMIT_AS at the current address space plus the headroom (Linux; elsewhere the reads run uncapped)."""
    import resource

    try:
        with open("/proc/self/statm") as fh:
            vms = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vms + (headroom_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


def _outcome(op: list, fn) -> dict:
    import cucim_like

    try:
        fn()
    except Exception as exc:  # the point: report every kind, typed or not
        typed = isinstance(exc, cucim_like.CucimLikeError)
        tile = getattr(exc, "tile", None) if typed else None
        return {
            "op": op,
            "exc": type(exc).__name__,
            "module": type(exc).__module__,
            "typed": typed,
            "path": getattr(exc, "path", None) if typed else None,
            "level": getattr(exc, "level", None) if typed else None,
            "tile": list(tile) if isinstance(tile, tuple) else tile,
            "msg": str(exc)[:400],
        }
    return {"op": op, "ok": True}


def _default_ops(img) -> list[list]:
    levels = img.levels
    h0, w0 = levels[0].height, levels[0].width
    last = len(levels) - 1
    ops: list[list] = [["meta"], ["region", 0, 0, 64, 64, 0, 1]]
    ops.append(["region", max(0, w0 // 2 - 150), max(0, h0 // 2 - 100), 300, 200, 0, 2])
    ops.append(["region", max(0, w0 - 40), max(0, h0 - 30), 100, 80, 0, 1])
    ops.append(["region", 0, 0, 48, 48, last, 1])
    small = levels[last]
    if math.prod(small.shape) * small.dtype.itemsize <= MAX_DEFAULT_OUTPUT:
        ops.append(["level", last, 2])
    else:
        ops.append(["region", 0, 0, 512, 512, last, 2])
    ops.append(["assoc"])
    # without a cache, parts of tiles are decoded cropped (JPEG through TurboJPEG): the same damaged bytes
    # must fail as cleanly on that path
    ops.append(["nocache"])
    ops.append(["region", min(10, w0 - 1), min(10, h0 - 1), 100, 60, 0, 1])
    ops.append(["region", max(0, w0 // 2 - 37), max(0, h0 // 2 - 53), 90, 70, 0, 2])
    return ops


def _run_op(img, op: list) -> None:
    kind = op[0]
    if kind == "meta":
        img.metadata  # noqa: B018 - touching the properties is the test
        img.resolutions  # noqa: B018
    elif kind == "region":
        _, x, y, w, h, level, workers = op
        if img.is_volume:
            img.read_region((x, y, 0), (w, h, 1), level=level, num_workers=workers)
        else:
            img.read_region((x, y), (w, h), level=level, num_workers=workers)
    elif kind == "level":
        _, index, workers = op
        index = index if index >= 0 else len(img.levels) + index
        img.read_region(level=index, num_workers=workers)
    elif kind == "assoc":
        for name in sorted(img.associated_images):
            lvl = img._source.associated[name].level
            if math.prod(lvl.shape) * lvl.dtype.itemsize <= MAX_DEFAULT_OUTPUT:
                img.associated_image(name)
    elif kind == "associated":  # one associated image, whatever its size
        img.associated_image(op[1])
    elif kind == "nocache":  # later ops of the job read without a tile cache
        import cucim_like

        cucim_like.CuImage.cache("no_cache")
    elif kind == "selftest-abort":  # the harness's own tests: a crash, a hang, an untyped error
        os.abort()
    elif kind == "selftest-sleep":
        time.sleep(op[1])
    elif kind == "selftest-raise":
        raise IndexError("selftest")
    else:
        raise ValueError(f"unknown op {op!r}")


def _run_job(job: dict) -> dict:
    import resource

    import cucim_like

    cucim_like.CuImage.cache("per_process", memory_capacity=64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    img_box: list = []
    outcomes = [_outcome(["open"], lambda: img_box.append(cucim_like.CuImage(job["path"])))]
    if img_box:
        img = img_box[0]
        try:
            ops = job.get("ops")
            if ops is None:
                holder: list = []
                outcome = _outcome(["plan"], lambda: holder.append(_default_ops(img)))
                ops = holder[0] if holder else []
                if not holder:
                    outcomes.append(outcome)
            for op in ops:
                outcomes.append(_outcome(op, lambda op=op: _run_op(img, op)))
        finally:
            outcomes.append(_outcome(["close"], img.close))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"outcomes": outcomes, "rss_growth_kb": after - before}


def main(argv: list[str]) -> int:
    jobs_file, start, headroom_mb = argv[0], int(argv[1]), int(argv[2])
    sys.path.insert(0, str(REPO))
    import imagecodecs  # noqa: F401 - load everything before measuring the address space
    import numpy  # noqa: F401
    import tifffile  # noqa: F401

    import cucim_like
    from cucim_like.executors.pool import thread_pool

    thread_pool(2).submit(int).result()  # start the decode threads before the cap
    jobs = json.loads(Path(jobs_file).read_text())
    _cap_address_space(headroom_mb)
    cucim_like.CuImage.cache("per_process", memory_capacity=64)
    out = sys.stdout
    out.write("@@ready\n")
    out.flush()
    for i in range(start, len(jobs)):
        out.write(f"@@start {i}\n")
        out.flush()
        report = _run_job(jobs[i])
        out.write(f"@@done {i} {json.dumps(report)}\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
