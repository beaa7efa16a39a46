"""Open a slide, print what it is, and save a region and the label.

    python examples/read_slide.py [PATH]

Without PATH it uses the built-in sample slide (generated once into the cache folder).
"""

from __future__ import annotations

import sys

import numpy as np

from cucim_like import CuImage
from cucim_like.sample import sample_slide


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else sample_slide()
    with CuImage(path) as img:
        print(img)
        print("levels:", img.resolutions["level_dimensions"], "downsamples:", img.resolutions["level_downsamples"])
        print("spacing:", img.spacing(), img.spacing_units())
        w, h = img.size("XY")
        region = img.read_region(location=(w // 2, h // 2), size=(512, 512), level=0)
        print("region:", region.shape, region.dtype, "mean", region.mean(axis=(0, 1)).round(1))
        level = img.resolutions["level_count"] - 1
        overview = img.read_region(level=level)  # the whole lowest-resolution level
        print("overview:", overview.shape)
        np.save("region.npy", region)
        if "label" in img.associated_images:
            print("label:", img.associated_image("label").shape)


if __name__ == "__main__":
    main()
