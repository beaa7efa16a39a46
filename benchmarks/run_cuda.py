"""Benchmark cucim_like's CUDA path on the large benchmark slide (issue 4's targets).

Sections (contenders alternated round-robin in one process, order rotated every repeat; medians reported):

* floor: every level-0 tile decoded by nvImageCodec in batches of 256 code streams, bytes already in host
  memory, no I/O and no placement: the decode throughput the executor can at best reach. Run with the
  default backends (nvJPEG hardware engine where the GPU has one, else hybrid/CUDA) and with the hardware
  engine alone, which tells which backend is in use (the hardware-only decoder returns None without one).
* whole: level 0 into GPU memory: cucim_like device="cuda" (device cache off), cuCIM device="cuda", and
  cucim_like on the CPU with every core (its result is host memory; the target compares times).
* patches: 224 x 224 patches at random level-0 locations in batches of 256 (seeded): cucim_like
  device="cuda" (tiles decoded only over the part a patch needs), cucim_like on the CPU, cuCIM device="cuda".

Every timed GPU call ends with a stream synchronisation. ``--host`` runs the same code on the CUDA
executor's host stand-in (NumPy, nvImageCodec's CPU backend) to check the script without a GPU; its numbers
mean nothing. Results: benchmarks/data/cuda-results.{json,md}.

Usage: ``python benchmarks/run_cuda.py [--sections floor,whole,patches] [--repeats N] [--quick] [--host]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import DATA, Contender, fmt_time, median, round_robin  # noqa: E402
from make_slide import DEFAULT_OUT, ensure_slide  # noqa: E402

import cucim_like  # noqa: E402
from cucim_like.cuda import backends, nvdecode  # noqa: E402

SECTIONS = ("floor", "whole", "patches")
BATCH = 256
PATCH = 224


class Gpu:
    """The device side: synchronisation, and the backend to use (the GPU, or the host stand-in)."""

    def __init__(self, host: bool) -> None:
        self.host = host
        if host:
            import cucim_like.cuda as cuda_pkg

            cuda_pkg.require_cuda = lambda path=None: None
            backends.backend_for = lambda device: backends.HostBackend()
            self.decoder = "cpu"
            self.name = "host stand-in (numbers meaningless)"
        else:
            import cupy

            self.cupy = cupy
            self.decoder = "gpu"
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
            self.name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def sync(self) -> None:
        if not self.host:
            self.cupy.cuda.get_current_stream().synchronize()


def level0_streams(path: Path) -> tuple[list, list[int]]:
    """Every level-0 tile's prepared stream (tables merged, header checked), bytes in host memory."""
    img = cucim_like.CuImage(str(path))
    level = img.levels[0]
    offsets, lengths, _ = level.tile_table()
    data = Path(path).read_bytes()
    streams, sizes = [], []
    for off, n in zip(offsets.reshape(-1).tolist(), lengths.reshape(-1).tolist(), strict=True):
        s = nvdecode.prepare_stream(level, memoryview(data)[off : off + n])
        streams.append(nvdecode.PreparedStream(bytes(s.data), s.rows, s.columns, s.samples, s.params))
        sizes.append(s.rows * s.columns * s.samples)
    return streams, sizes


def floor_contender(streams: list, backend: str, gpu: Gpu, name: str) -> Contender:
    def prepare():
        def run() -> int:
            failed = 0
            for i in range(0, len(streams), BATCH):
                images = nvdecode.decode_batch(streams[i : i + BATCH], None, backend=backend)
                failed += sum(im is None for im in images)
                del images
            gpu.sync()
            return failed

        return run

    return Contender(name, prepare)


def section_floor(path: Path, gpu: Gpu, repeats: int, results: dict) -> None:
    streams, sizes = level0_streams(path)
    contenders = [floor_contender(streams, gpu.decoder, gpu, f"nvImageCodec {gpu.decoder}")]
    if not gpu.host:
        contenders.append(floor_contender(streams, "hw", gpu, "nvImageCodec hw only"))
    failures: dict[str, int] = {}
    round_robin(contenders, repeats, "floor", lambda c, r: failures.__setitem__(c.name, r), keep_going=True)
    mpix = sum(sizes) / 3 / 1e6
    rows = {}
    for c in contenders:
        if c.error is None:
            rows[c.name] = {"median_s": median(c.times), "mpix_per_s": mpix / median(c.times),
                            "failed_tiles": failures.get(c.name)}
        else:
            rows[c.name] = {"error": c.error}
    hw = rows.get("nvImageCodec hw only", {})
    rows["backend_in_use"] = "nvImageCodec CPU backend (host stand-in)" if gpu.host else (
        "hardware (nvJPEG HW engine decodes every tile)" if hw.get("failed_tiles") == 0
        else "hybrid/CUDA (the hardware-only decoder refused tiles or is absent)")
    results["floor"] = {"tiles": len(streams), "mpix": mpix, **rows}


def section_whole(path: Path, gpu: Gpu, repeats: int, results: dict, workers: int) -> None:
    ours = cucim_like.CuImage(str(path))
    contenders = []

    def ours_cuda():
        cucim_like.device_cache(memory_capacity=0)

        def run():
            out = ours.read_region(device="cuda")
            gpu.sync()
            return out.shape

        return run

    def ours_cpu():
        cucim_like.CuImage.cache("no_cache")
        return lambda: ours.read_region(num_workers=workers).shape

    contenders.append(Contender("cucim_like cuda", ours_cuda))
    contenders.append(Contender(f"cucim_like cpu x{workers}", ours_cpu))
    if not gpu.host:
        contenders.append(Contender("cuCIM cuda", _cucim_whole(path, gpu)))
    round_robin(contenders, repeats, "whole", keep_going=True)
    results["whole"] = {c.name: ({"median_s": median(c.times)} if c.error is None else {"error": c.error})
                        for c in contenders}


def _cucim_whole(path: Path, gpu: Gpu):
    def prepare():
        from cucim import CuImage as CucimImage

        img = CucimImage(str(path))
        w, h = img.resolutions["level_dimensions"][0]

        def run():
            out = img.read_region((0, 0), (w, h), device="cuda")
            gpu.sync()
            return out.shape

        return run

    return prepare


def section_patches(path: Path, gpu: Gpu, repeats: int, results: dict, workers: int, n_batches: int) -> None:
    ours = cucim_like.CuImage(str(path))
    w, h = ours.resolutions["level_dimensions"][0]
    rng = np.random.default_rng(0)
    locs = np.stack([rng.integers(0, w - PATCH, BATCH * n_batches), rng.integers(0, h - PATCH, BATCH * n_batches)],
                    axis=1)

    def ours_on(device: str):
        def prepare():
            cucim_like.device_cache(memory_capacity=0)
            cucim_like.CuImage.cache("no_cache")

            def run():
                n = 0
                for batch in ours.read_region(locs, (PATCH, PATCH), batch_size=BATCH, device=device,
                                              num_workers=workers):
                    n += batch.shape[0]
                gpu.sync()
                return n

            return run

        return prepare

    contenders = [Contender("cucim_like cuda", ours_on("cuda")), Contender(f"cucim_like cpu x{workers}",
                                                                           ours_on("cpu"))]
    if not gpu.host:
        def cucim_prepare():
            from cucim import CuImage as CucimImage

            img = CucimImage(str(path))

            def run():
                n = 0
                for batch in img.read_region(locs.astype(np.uint32), (PATCH, PATCH), batch_size=BATCH,
                                             device="cuda", num_workers=workers):
                    n += batch.shape[0]
                gpu.sync()
                return n

            return run

        contenders.append(Contender("cuCIM cuda", cucim_prepare))
    round_robin(contenders, repeats, "patches", keep_going=True)
    results["patches"] = {"patches": len(locs), **{
        c.name: ({"median_s": median(c.times), "patches_per_s": len(locs) / median(c.times)} if c.error is None
                 else {"error": c.error}) for c in contenders}}


def report(results: dict) -> str:
    lines = [f"GPU: {results['gpu']}; CPU workers: {results['workers']}; slide {results['slide']}", ""]
    floor = results.get("floor")
    if floor:
        lines.append(f"(c) decode floor, {floor['tiles']} level-0 tiles ({floor['mpix']:.0f} Mpixel); backend in "
                     f"use: {floor['backend_in_use']}")
        for name, row in floor.items():
            if isinstance(row, dict):
                lines.append(f"  {name}: " + (f"{fmt_time(row['median_s'])}, {row['mpix_per_s']:.0f} Mpixel/s, "
                                               f"failed tiles {row['failed_tiles']}" if "median_s" in row
                                               else row["error"]))
    whole = results.get("whole")
    if whole:
        lines.append("(a) whole level 0")
        for name, row in whole.items():
            lines.append(f"  {name}: " + (fmt_time(row["median_s"]) if "median_s" in row else row["error"]))
        ours = whole.get("cucim_like cuda", {}).get("median_s")
        if ours and floor:
            best = min(r["median_s"] for r in floor.values() if isinstance(r, dict) and "median_s" in r)
            lines.append(f"  vs floor: {best / ours:.0%} of the floor's throughput (target >= 85%)")
        for other, target in (("cuCIM cuda", 5), (f"cucim_like cpu x{results['workers']}", 3)):
            theirs = whole.get(other, {}).get("median_s")
            if ours and theirs:
                lines.append(f"  vs {other}: {theirs / ours:.2f}x faster (target >= {target}x)")
    patches = results.get("patches")
    if patches:
        lines.append(f"(b) {patches['patches']} patches {PATCH}x{PATCH}, batches of {BATCH}")
        for name, row in patches.items():
            if isinstance(row, dict):
                lines.append(f"  {name}: " + (f"{row['patches_per_s']:.0f} patches/s" if "median_s" in row
                                               else row["error"]))
        lines.append("  target: cucim_like cuda >= 20,000 patches/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small slide and 2 repeats (checks the script)")
    p.add_argument("--host", action="store_true", help="run on the host stand-in (no GPU; numbers meaningless)")
    p.add_argument("--slide", type=Path, default=None)
    args = p.parse_args(argv)
    sections = harness.parse_sections(p, args.sections, SECTIONS)
    if args.quick:
        slide = args.slide or ensure_slide(DATA / "quick.svs", width=2048, height=2048)
        repeats, n_batches = 2, 2
    else:
        slide = args.slide or ensure_slide(DEFAULT_OUT)
        repeats, n_batches = args.repeats, 20
    gpu = Gpu(args.host)
    workers = os.cpu_count() or 1
    results: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu.name, "workers": workers, "slide": slide.name,
                     "cucim_like": cucim_like.__version__}
    if "floor" in sections:
        section_floor(slide, gpu, repeats, results)
    if "whole" in sections:
        section_whole(slide, gpu, repeats, results, workers)
    if "patches" in sections:
        section_patches(slide, gpu, repeats, results, workers, n_batches)
    text = report(results)
    print(text)
    stem = "cuda-results-host" if args.host else "cuda-results"
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (DATA / f"{stem}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
