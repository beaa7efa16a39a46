"""Batched-patch benchmarks (training workloads) on the large benchmark slide.

    python benchmarks/run_batches.py [--repeats 3] [--patches 2000] [--slide PATH]

In one process, alternating contenders, medians over repeats:
  (1) 2000 random 224² patches at level 0, batch 64, 2 workers, no cache: cucim_like's batched read_region,
      cuCIM's batched read_region, an OpenSlide loop, and two decode floors (pre-loaded tiles, 2 threads, no
      placement): every tile the patches touch decoded once, and each batch's distinct tiles (as a batch
      without a cache must decode them).
  (2) an epoch: a second pass over the same locations with a 1 GiB cache (cucim_like per-process vs cuCIM
      per-process, both warmed by a first pass);
  (3) peak RSS of the batched run (fresh subprocess) against baseline + (prefetch_factor + 2) x batch;
  (4) a PyTorch DataLoader with 2 worker processes and the shared-memory cache against the in-process
      iterator (when torch is installed); for context, a DataLoader handing over as many batches with nothing
      decoded, and later passes (2 and 3) with warm caches and persistent workers.
Writes benchmarks/data/batches.json and prints a markdown section for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import DATA, median, proc_status  # noqa: E402  (a sibling module; the path above makes it importable)

SLIDE = DATA / "large.svs"
SIZE, BATCH, WORKERS = 224, 64, 2


def dataset_classes():
    """Two IterableDatasets for context (defined lazily: torch is optional): ``FilledBatches(n, shape)``, ``n``
    uint8 batches freshly allocated and filled (what handing batches over costs, nothing decoded), and
    ``OrdinaryPatchBatches``, PatchBatches' reading with the batches handed over the ordinary way."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    from cucim_like import CuImage
    from cucim_like.torch_data import PatchBatches

    def share() -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    class FilledBatches(IterableDataset):
        def __init__(self, n: int, shape: tuple[int, ...]) -> None:
            self.n, self.shape = n, shape

        def __iter__(self):
            worker, workers = share()
            for i in range(worker, self.n, workers):
                batch = np.empty(self.shape, np.uint8)
                batch.fill(i % 251)
                yield torch.from_numpy(batch)

    class OrdinaryPatchBatches(PatchBatches):
        def __iter__(self):
            worker, workers = share()
            mine = self._batches()[worker::workers]
            img = CuImage(self.path)
            for batch in img.read_region(self.locations[np.concatenate(mine)], self.size, self.level,
                                         batch_size=self.batch_size, num_workers=self.threads(workers),
                                         prefetch_factor=self.prefetch_factor):
                yield torch.from_numpy(batch)

    return FilledBatches, OrdinaryPatchBatches


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def locations(slide: Path, n: int) -> np.ndarray:
    from cucim_like import CuImage

    w, h = CuImage(slide).size("XY")
    rng = np.random.default_rng(2026)
    return np.stack([rng.integers(0, w - SIZE, n), rng.integers(0, h - SIZE, n)], axis=1).astype(np.int64)


def touched_tiles(locs: np.ndarray, tile: int, grid_x: int) -> list[list[int]]:
    """Per patch, the flat indices of the level-0 tiles it covers."""
    out = []
    for x, y in locs.tolist():
        out.append([ty * grid_x + tx for ty in range(y // tile, (y + SIZE - 1) // tile + 1)
                    for tx in range(x // tile, (x + SIZE - 1) // tile + 1)])
    return out


def floor_runner(slide: Path, tiles: list[int]):
    """A callable decoding the given tiles (pre-loaded bytes) with 2 threads, no placement."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(slide) as tf:
        page = tf.pages[0]
        fh = tf.filehandle
        data = []
        for t in tiles:
            fh.seek(page.dataoffsets[t])
            data.append(fh.read(page.databytecounts[t]))
        tables = page.jpegtables
    pool = ThreadPoolExecutor(WORKERS)

    def run() -> None:
        list(pool.map(lambda b: imagecodecs.jpeg8_decode(b, tables=tables, outcolorspace="RGB"), data))

    return run


def rss_child(slide: str, n: int) -> None:
    """Run in a subprocess: baseline RSS, the batched read, peak RSS, printed as JSON.

    Peak RSS is VmHWM of this process's address space (see harness.proc_status).
    """
    import psutil

    from cucim_like import CuImage

    img = CuImage(slide)
    CuImage.cache("no_cache")
    locs = locations(Path(slide), n)
    img.read_region((0, 0), (SIZE, SIZE))  # warm-up: loads the decoders and starts the threads (fixed costs)
    base = psutil.Process().memory_info().rss
    for _ in img.read_region(locs, (SIZE, SIZE), batch_size=BATCH, num_workers=WORKERS, prefetch_factor=2):
        pass
    print(json.dumps({"baseline": base, "peak": proc_status("VmHWM")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=SLIDE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--patches", type=int, default=2000)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.rss_child:
        rss_child(str(ns.slide), ns.patches)
        return
    import openslide
    from cucim import CuImage as CuCIM

    from cucim_like import CuImage

    img = CuImage(ns.slide)
    level = img.levels[0]
    locs = locations(ns.slide, ns.patches)
    per_patch = touched_tiles(locs, level.tile_shape[1], level.grid[3])
    unique = sorted({t for ts in per_patch for t in ts})
    per_batch = [t for b in range(0, len(locs), BATCH)
                 for t in sorted({t for ts in per_patch[b:b + BATCH] for t in ts})]
    loc_list = locs.tolist()
    cu = CuCIM(str(ns.slide))
    osl = openslide.OpenSlide(str(ns.slide))

    def ours() -> None:
        CuImage.cache("no_cache")
        for _ in img.read_region(locs, (SIZE, SIZE), batch_size=BATCH, num_workers=WORKERS):
            pass

    def cucim_batched() -> None:
        CuCIM.cache("no_cache")
        for b in cu.read_region(loc_list, (SIZE, SIZE), 0, num_workers=WORKERS, batch_size=BATCH):
            np.asarray(b)

    def openslide_loop() -> None:
        for x, y in loc_list:
            np.asarray(osl.read_region((x, y), 0, (SIZE, SIZE)))

    contenders = {
        "cucim_like batched": ours,
        "cuCIM batched": cucim_batched,
        "OpenSlide loop": openslide_loop,
        "floor: touched tiles once": floor_runner(ns.slide, unique),
        "floor: distinct tiles per batch": floor_runner(ns.slide, per_batch),
    }
    results: dict[str, list] = {k: [] for k in contenders}
    for _ in range(ns.repeats):
        for name, fn in contenders.items():
            results[name].append(timed(fn))

    # (2) epoch with a 1 GiB cache, both warmed by a first pass
    def ours_epoch() -> None:
        for _ in img.read_region(locs, (SIZE, SIZE), batch_size=BATCH, num_workers=WORKERS):
            pass

    def cucim_epoch() -> None:
        for b in cu.read_region(loc_list, (SIZE, SIZE), 0, num_workers=WORKERS, batch_size=BATCH):
            np.asarray(b)

    epoch: dict[str, list] = {"cucim_like, 1 GiB per-process cache": [], "cuCIM, 1 GiB per-process cache": []}
    for _ in range(ns.repeats):
        CuImage.cache("per_process", memory_capacity=1024)
        ours_epoch()
        epoch["cucim_like, 1 GiB per-process cache"].append(timed(ours_epoch))
        CuImage.cache("no_cache")
        CuCIM.cache("per_process", memory_capacity=1024)
        cucim_epoch()
        epoch["cuCIM, 1 GiB per-process cache"].append(timed(cucim_epoch))
        CuCIM.cache("no_cache")

    # (3) peak RSS in a fresh process
    child = subprocess.run([sys.executable, __file__, "--rss-child", "--slide", str(ns.slide), "--patches",
                            str(ns.patches)], capture_output=True, text=True, check=True)
    rss = json.loads(child.stdout.strip().splitlines()[-1])
    batch_bytes = BATCH * SIZE * SIZE * 3
    rss_limit = rss["baseline"] + (2 + 2) * batch_bytes

    # (4) DataLoader with 2 worker processes and the shared-memory cache vs the in-process iterator
    loader = None
    later: dict[str, list[float]] = {}
    steady: list[float] = []  # DataLoader and in-process iterator: patches/s after each one's first batch
    steady_in_process: list[float] = []
    try:
        import torch  # noqa: F401
        from torch.utils.data import DataLoader

        from cucim_like.torch_data import PatchBatches

        FilledBatches, OrdinaryPatchBatches = dataset_classes()

        def after_first(batches, into: list[float]) -> None:
            """Consume ``batches``; append to ``into`` the patches per second after the first batch arrived."""
            first, n_after = None, 0
            for batch in batches:
                if first is None:
                    first = time.perf_counter()
                else:
                    n_after += len(batch)
            into.append(n_after / (time.perf_counter() - first))

        def in_process() -> None:
            CuImage.cache("no_cache")
            after_first(img.read_region(locs, (SIZE, SIZE), batch_size=BATCH, num_workers=WORKERS),
                        steady_in_process)

        def data_loader(dataset=PatchBatches) -> None:
            # uint8 batches, as the in-process iterator yields (conversion belongs to the training step)
            CuImage.cache("shared_memory", memory_capacity=256)
            dl = DataLoader(dataset(str(ns.slide), locs, (SIZE, SIZE), batch_size=BATCH), batch_size=None,
                            num_workers=2)
            after_first(dl, steady)
            CuImage.cache("no_cache")

        def transport() -> None:
            # the same number of batches of the same size, made and handed over by 2 workers, nothing decoded
            n_batches = -(-ns.patches // BATCH)
            for _ in DataLoader(FilledBatches(n_batches, (BATCH, SIZE, SIZE, 3)), batch_size=None, num_workers=2,
                                persistent_workers=False):
                pass

        loader = {"in-process iterator": [], "DataLoader, 2 workers, shared-memory cache": [],
                  "DataLoader moving as many filled batches, nothing decoded": [],
                  "DataLoader as above, batches handed over the ordinary way (no slots)": []}
        for _ in range(ns.repeats):
            loader["in-process iterator"].append(timed(in_process))
            loader["DataLoader, 2 workers, shared-memory cache"].append(timed(data_loader))
            loader["DataLoader moving as many filled batches, nothing decoded"].append(timed(transport))
            n = len(steady)
            loader["DataLoader as above, batches handed over the ordinary way (no slots)"].append(
                timed(lambda: data_loader(OrdinaryPatchBatches)))
            del steady[n:]  # the steady-state figure is PatchBatches' own

        # Later epochs: the caches configured once and warmed by a first pass, the DataLoader's workers kept
        # (persistent_workers), as a training run goes on; passes 2 and 3 timed.
        def passes_in_process(kind: str | None) -> list[float]:
            CuImage.cache(kind or "no_cache", **({"memory_capacity": 256} if kind else {}))
            out = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in img.read_region(locs, (SIZE, SIZE), batch_size=BATCH, num_workers=WORKERS):
                    pass
                out.append(time.perf_counter() - t0)
            CuImage.cache("no_cache")
            return out[1:]

        def passes_data_loader() -> list[float]:
            CuImage.cache("shared_memory", memory_capacity=256)
            dl = DataLoader(PatchBatches(str(ns.slide), locs, (SIZE, SIZE), batch_size=BATCH), batch_size=None,
                            num_workers=2, persistent_workers=True)
            out = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in dl:
                    pass
                out.append(time.perf_counter() - t0)
            del dl
            CuImage.cache("no_cache")
            return out[1:]

        later = {"in-process iterator, no cache": [], "in-process iterator, 256 MiB per-process cache": [],
                 "DataLoader, persistent workers, 256 MiB shared-memory cache": []}
        for _ in range(max(1, ns.repeats // 2)):
            later["in-process iterator, no cache"] += passes_in_process(None)
            later["in-process iterator, 256 MiB per-process cache"] += passes_in_process("per_process")
            later["DataLoader, persistent workers, 256 MiB shared-memory cache"] += passes_data_loader()
    except ImportError as exc:
        print(f"DataLoader comparison skipped: {exc}")

    med = {k: median([w for w, _ in v]) for k, v in {**results, **epoch, **(loader or {})}.items()}
    out = {"medians_s": med, "raw": {k: v for k, v in {**results, **epoch, **(loader or {})}.items()},
           "later_passes_s": later,
           "after_first_batch_patches_per_s": {"DataLoader": steady, "in-process": steady_in_process},
           "rss": rss, "rss_limit": rss_limit, "patches": ns.patches,
           "unique_tiles": len(unique), "per_batch_tiles": len(per_batch), "load": os.getloadavg()}
    DATA.mkdir(exist_ok=True)
    (DATA / "batches.json").write_text(json.dumps(out, indent=2))
    ours_t = med["cucim_like batched"]
    print(f"\n### Batched patches: {ns.patches} random {SIZE}² at level 0, batch {BATCH}, {WORKERS} workers "
          f"(medians of {ns.repeats}, load {os.getloadavg()[0]:.2f})\n")
    print("| contender | median | patches/s | time / cucim_like |\n|---|---:|---:|---:|")
    for k in results:
        print(f"| {k} | {med[k]:.3f} s | {ns.patches / med[k]:.0f} | {med[k] / ours_t:.2f} |")
    print(f"\nTiles touched: {len(unique)} distinct, {len(per_batch)} distinct-per-batch summed.\n")
    print("| epoch (second pass, warm cache) | median | time / cucim_like |\n|---|---:|---:|")
    e0 = med["cucim_like, 1 GiB per-process cache"]
    for k in epoch:
        print(f"| {k} | {med[k]:.3f} s | {med[k] / e0:.2f} |")
    verdict = "PASS" if rss["peak"] <= rss_limit else "FAIL"
    print(f"\nPeak RSS of the batched run: {rss['peak'] / 2**20:.0f} MiB; baseline {rss['baseline'] / 2**20:.0f} "
          f"MiB; limit baseline + 4 batches = {rss_limit / 2**20:.0f} MiB -> {verdict}")
    if loader:
        a, b = med["in-process iterator"], med["DataLoader, 2 workers, shared-memory cache"]
        print(f"\nDataLoader: in-process {a:.3f} s, DataLoader {b:.3f} s including worker start-up -> "
              f"{a / b * 100:.0f} % of the in-process throughput; after each one's first batch "
              f"{median(steady):.0f} against {median(steady_in_process):.0f} patches/s = "
              f"{median(steady) / median(steady_in_process) * 100:.0f} %")
        c = med["DataLoader moving as many filled batches, nothing decoded"]
        print(f"Handing the batches over alone (a DataLoader whose 2 workers only allocate and fill as many "
              f"batches): {c:.3f} s = {c / a * 100:.0f} % of the in-process iterator's time")
        d = med["DataLoader as above, batches handed over the ordinary way (no slots)"]
        print(f"The same DataLoader with its batches handed over the ordinary way (a fresh shared-memory segment "
              f"each): {d:.3f} s -> {a / d * 100:.0f} % of the in-process throughput")
    if later:
        print("\n| later passes (2 and 3 of 3, caches warmed by pass 1) | median | patches/s |\n|---|---:|---:|")
        for k, v in later.items():
            print(f"| {k} | {median(v):.3f} s | {ns.patches / median(v):.0f} |")
    print("\nTargets:")
    print(f"- within 1.15 x of the floor (touched tiles once): {ours_t / med['floor: touched tiles once']:.2f}")
    print(f"- vs the per-batch floor: {ours_t / med['floor: distinct tiles per batch']:.2f}")
    print(f"- at least as fast as cuCIM batched: {med['cuCIM batched'] / ours_t:.2f} x")
    print(f"- >= 5 x faster than an OpenSlide loop: {med['OpenSlide loop'] / ours_t:.2f} x")
    print(f"- epoch >= 3 x faster than cuCIM with its cache: {med['cuCIM, 1 GiB per-process cache'] / e0:.2f} x")


if __name__ == "__main__":
    main()
