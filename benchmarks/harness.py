"""Helpers shared by the benchmark runners (run.py, run_dicom.py, run_batches.py).

The runners are scripts: they put this folder on ``sys.path`` and ``from harness import ...``. Importing this
module puts the repository on ``sys.path`` too, so that ``import cucim_like`` finds this tree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRACEBACK_ENV = "RUN_DICOM_TRACEBACK"  # set it to print the traceback of a contender dropped by round_robin


# -- small helpers ----------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    """The median as a plain float."""
    return float(statistics.median(values))


def describe(exc: BaseException) -> str:
    """One line for a table cell: the exception type and the first line of its message."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:160] if msg else ''}".rstrip(": ")


def fmt_time(seconds: float) -> str:
    """Seconds as s, ms or µs, whichever reads best."""
    if seconds >= 0.1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{1000 * seconds:.2f} ms"
    return f"{1e6 * seconds:.0f} µs"


def parse_sections(parser: argparse.ArgumentParser, value: str, sections: Sequence[str]) -> list[str]:
    """The comma-separated section names in ``value``; an unknown one ends the run through ``parser.error``."""
    only = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(only) - set(sections))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(sections)}")
    return only


# -- subprocesses -----------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """Environment for subprocesses: the repository on PYTHONPATH so ``import cucim_like`` finds this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_child(code: str, timeout: float | None = None, brief_error: bool = False) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its last stdout line must be one JSON object.

    A failed child raises RuntimeError with the end of its stderr, or with ``brief_error`` only the last line
    (for a table cell).
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(),
                          cwd=str(REPO), check=False, timeout=timeout)
    if proc.returncode != 0:
        if brief_error:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"exit status {proc.returncode}")
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def proc_status(key: str) -> int:
    """A byte count from /proc/self/status, e.g. VmHWM: this process's own peak RSS (ru_maxrss would carry the
    parent's high-water mark across fork + exec on Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# proc_status's source, for the code run by run_child (pasted before str.format, so it holds no braces)
PROC_STATUS_CODE = inspect.getsource(proc_status)


# -- timing -----------------------------------------------------------------------------------------------------
@dataclass
class Contender:
    """One library in a timing.

    ``prepare`` runs untimed before each repeat and returns the timed call. By default one call is one timed unit
    (for instance 200 reads); with ``per_call`` the call is timed ``calls`` times per repeat, each on its own, and
    ``before``/``after`` run untimed around each call (``after`` gets the call's result, e.g. to close it).
    """

    name: str
    prepare: Callable[[], Callable[[], Any]]
    note: str = ""
    per_call: bool = False
    calls: int = 1
    before: Callable[[], None] | None = None
    after: Callable[[Any], None] | None = None
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _show(elapsed: float, cpu: float) -> str:
    return f"{fmt_time(elapsed)} (CPU {fmt_time(cpu)})"


def _time_repeat(c: Contender, on_result: Callable[[Contender, Any], None] | None,
                 show: Callable[[float, float], str]) -> str:
    """One repeat of ``c``: record its times and return the progress text."""
    call = c.prepare()
    gc.collect()
    if c.per_call:
        batch, cpu0 = [], time.process_time()
        for _ in range(c.calls):
            if c.before is not None:
                c.before()
            t0 = time.perf_counter()
            result = call()
            batch.append(time.perf_counter() - t0)
            if c.after is not None:
                c.after(result)
            del result
        c.cpu.append((time.process_time() - cpu0) / c.calls)
        c.times.extend(batch)
        return f"median {fmt_time(median(batch))} per call over {c.calls}"
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - t0
    c.cpu.append(time.process_time() - cpu0)
    c.times.append(elapsed)
    if on_result is not None:
        on_result(c, result)
    return show(elapsed, c.cpu[-1])


def round_robin(contenders: list[Contender], repeats: int, label: str,
                on_result: Callable[[Contender, Any], None] | None = None, *, keep_going: bool = False,
                width: int = 22, show: Callable[[float, float], str] = _show) -> None:
    """Time each contender once per repeat, rotating the order each repeat so none always goes first.

    ``on_result(contender, result)`` runs untimed after each timed unit that is not per-call. With ``keep_going``
    a contender that raises is dropped (its exception kept in ``error`` for the report) and the others go on;
    otherwise the exception propagates. ``width`` and ``show(wall_s, cpu_s)`` shape the progress lines.
    """
    for rep in range(repeats):
        live = [c for c in contenders if c.error is None]
        if not live:
            return
        k = rep % len(live)
        for c in live[k:] + live[:k]:
            try:
                shown = _time_repeat(c, on_result, show)
            except Exception as exc:
                if not keep_going:
                    raise
                c.error = describe(exc)
                print(f"  [{label}] {c.name}: FAILED {c.error}", flush=True)
                if os.environ.get(TRACEBACK_ENV):
                    traceback.print_exc()
                continue
            gc.collect()
            print(f"  [{label}] repeat {rep + 1}/{repeats} {c.name:<{width}} {shown}", flush=True)


# -- environment and results ------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


LIBRARY_VERSIONS: dict[str, Callable[[], str]] = {
    "libjpeg": lambda: importlib.import_module("imagecodecs").jpeg8_version(),
    "charls": lambda: importlib.import_module("imagecodecs").jpegls_version(),
    "openslide (C library)": lambda: str(importlib.import_module("openslide").__library_version__),
}


def versions(modules: Iterable[tuple[str, str]], libraries: Iterable[str] = ()) -> dict[str, str]:
    """Python's version, then each ``(name, module)``'s ``__version__`` (a missing one reported as unavailable),
    then the C libraries named (keys of LIBRARY_VERSIONS), left out when unavailable."""
    out = {"python": platform.python_version()}
    for name, mod in modules:
        try:
            out[name] = str(importlib.import_module(mod).__version__)
        except Exception as exc:  # missing or broken optional library
            out[name] = f"unavailable ({type(exc).__name__})"
    for name in libraries:
        version = LIBRARY_VERSIONS[name]
        try:
            out[name] = version()
        except Exception:
            pass
    return out


def machine(cpu_count: bool = False) -> dict[str, Any]:
    """CPUs, memory, platform and load average (``cpu_count``: os.cpu_count() too, beside the affinity's)."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    out: dict[str, Any] = {"nproc": len(os.sched_getaffinity(0))}
    if cpu_count:
        out["cpu_count"] = os.cpu_count()
    out.update(cpu_model=cpu_model(), memory_gib=mem, platform=platform.platform(),
               loadavg_at_start=[round(v, 2) for v in os.getloadavg()])
    return out


def git_state() -> dict[str, Any]:
    """The commit measured and the files changed outside benchmarks/ (others edit the tree meanwhile)."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=str(REPO), check=False)
        return proc.stdout.rstrip() if proc.returncode == 0 else ""  # keep porcelain's leading status column

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("benchmarks/")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "unknown", "dirty": dirty}


def run_record(modules: Iterable[tuple[str, str]], libraries: Iterable[str] = (),
               cpu_count: bool = False) -> dict[str, Any]:
    """The start of a results record: date, start time, git state, machine and versions."""
    return {"date": dt.date.today().isoformat(), "started": dt.datetime.now().strftime("%H:%M:%S"),
            "git": git_state(), "machine": machine(cpu_count), "versions": versions(modules, libraries)}


def environment_lines(results: dict[str, Any], wall: bool = False) -> list[str]:
    """The commit, machine and versions lines of a RESULTS.md section (``wall``: with the run's wall time)."""
    m, v, g = results["machine"], results["versions"], results["git"]
    started = results["started"] + (f", {results['wall_s']} s" if wall else "")
    return [
        f"- cucim_like: commit {g['commit']}"
        + (f" with uncommitted changes to {', '.join(g['dirty'])}" if g["dirty"] else ", no uncommitted changes")
        + f" (run started {started})",
        f"- Machine: {m['nproc']} CPUs (`nproc`), {m['cpu_model']}, {m['memory_gib']} GiB RAM, {m['platform']}; "
        f"load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')} (the machine is shared)",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]


def save_results(path: Path, results: dict[str, Any], t0: float,
                 markdown: Callable[[dict[str, Any]], str]) -> str:
    """Add the wall time since ``t0`` and the load average at the end, write ``path`` (JSON) and its .md twin;
    return the markdown."""
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results)
    path.with_suffix(".md").write_text(md)
    return md
