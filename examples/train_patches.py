"""Train a small CNN on random tissue patches streamed from a slide through a PyTorch DataLoader.

    python examples/train_patches.py [SLIDE] [--steps 20] [--workers 2] [--batch 32]

Patch locations on tissue come from ``tissue_locations``. ``PatchBatches`` splits the batches between the
DataLoader's worker processes; each worker reads its batches with cucim_like's batched ``read_region`` (two
decode threads), all workers share one shared-memory tile cache, and the batches reach this process through
reused shared-memory slots. Without SLIDE it uses the built-in sample slide. Needs torch (CPU is fine).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from cucim_like import CuImage, preferred_memory_capacity, tissue_locations
from cucim_like.sample import sample_slide
from cucim_like.torch_data import PatchBatches


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    ns = parser.parse_args(argv)

    path = str(ns.slide or sample_slide())
    img = CuImage(path)
    locations = tissue_locations(img, ns.size, level=0, min_tissue=0.5)
    print(f"{path}: {len(locations)} tissue patches of {ns.size}²")
    CuImage.cache("shared_memory", memory_capacity=max(64, preferred_memory_capacity(img, patch_size=(ns.size,) * 2)))
    patches = PatchBatches(path, locations, (ns.size, ns.size), batch_size=ns.batch, shuffle=True, seed=0)
    loader = DataLoader(patches, batch_size=None, num_workers=ns.workers)
    model = tiny_cnn()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    seen, losses, start = 0, [], time.perf_counter()
    for step, patches_u8 in enumerate(loader):
        if step >= ns.steps:
            break
        batch = patches_u8.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W) float32 in [0, 1]
        # a toy target: is the patch darker than average (more stained) than the batch's median
        darkness = 1 - batch.mean(dim=(1, 2, 3))
        target = (darkness > darkness.median()).long()
        optimiser.zero_grad()
        loss = loss_fn(model(batch), target)
        loss.backward()
        optimiser.step()
        seen += len(batch)
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    cache = CuImage.cache()
    print(f"{len(losses)} steps, {seen} patches in {elapsed:.2f} s ({seen / elapsed:.0f} patches/s), "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; cache hits {cache.hit_count} misses {cache.miss_count}")
    CuImage.cache("per_process")
    return {"steps": len(losses), "patches": seen, "losses": losses}


if __name__ == "__main__":
    main()
