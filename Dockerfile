# cucim_like with its CUDA 13 path: nvImageCodec (nvJPEG, nvJPEG2000), kvikio, CuPy.
# Build: docker build -t cucim_like .   Run the GPU tests: docker run --gpus all cucim_like
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cucim_like
COPY pyproject.toml README.md ./
COPY cucim_like ./cucim_like
COPY kernels ./kernels
COPY tests ./tests
RUN python3 -m pip install ".[cuda13,test]"

CMD ["python3", "-m", "pytest", "-m", "gpu", "-q", "tests"]
