#!/usr/bin/env bash
# Wheels the GPU test machines (H100/H200: Python 3.12, CUDA 13, cupy-cuda13x, no network) lack for the
# CUDA path's tests and benchmarks, downloaded here in two parts of under 64 MiB each (the most one device
# call may carry). Run from the repository root on a machine with PyPI access:
#
#   bash benchmarks/device_wheels.sh            # -> .whl/a (42 MiB) and .whl/b (40 MiB), git-excluded
#
# Then, on the device, carry one part per call and install both into one folder (kept while the machine
# stays warm); every later call only exports PYTHONPATH:
#
#   call 1 (carry [".whl/a"]): python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/a/*.whl
#   call 2 (carry [".whl/b"]): python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/b/*.whl
#   then:  export PYTHONPATH=/tmp/site:$PWD; python3 -m pytest -m gpu -q tests/cuda
#          python3 benchmarks/run_cuda.py --repeats 3      # generates benchmarks/data/large.svs first (~15 s)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"
}
# part a: the CPU codecs and DICOM parser, kvikio, nvJPEG/nvJPEG2000 libraries for nvImageCodec
download .whl/a imagecodecs simplejpeg pydicom "kvikio-cu13==26.10.*" "libkvikio-cu13==26.10.*" \
    "rapids-logger==0.3.*" nvidia-nvjpeg nvidia-nvjpeg2k-cu13
# part b: nvImageCodec itself, and cuCIM for the side-by-side benchmark
download .whl/b "nvidia-nvimgcodec-cu13>=0.9,<0.10" "cucim-cu13==26.10.*"
du -sh .whl/a .whl/b
