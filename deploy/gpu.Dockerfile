# anysat-serve GPU worker image: `anysat worker` on an NVIDIA GPU (ONNX Runtime's CUDA provider, fp16 graphs).
# The gateway, Redis and the CPU workers use the CPU image (./Dockerfile); this one only runs GPU workers
# (docker-compose.yml: service worker-gpu, profile gpu).
#
#   docker build -f deploy/gpu.Dockerfile -t anysat-serve:gpu .
#   docker run --gpus all -e ANYSAT_REDIS_URL=redis://redis:6379/0 anysat-serve:gpu
#
# NOT BUILT OR RUN IN THIS PROJECT'S CI: the development machines have no registry access for the CUDA base and no
# GPU. It is kept minimal on purpose; docs/gpu.md says how to check it on a GPU host (the worker refuses to start,
# exit 3, if the CUDA provider is not usable, so a broken image fails loudly, never quietly on the CPU).
#
# CUDA versions: onnxruntime-gpu >= 1.31 on PyPI is built for CUDA 13 (host driver >= 580) and brings its CUDA and
# cuDNN libraries as wheels (the [gpu] extra asks for onnxruntime-gpu[cuda,cudnn]); torch's cu130 wheels share
# those nvidia-* wheels. So the base needs no CUDA of its own beyond what the NVIDIA container runtime mounts; a
# cuDNN runtime base is the default anyway so that tools expecting system CUDA find it. For a CUDA 12 host, pin an
# onnxruntime-gpu built for CUDA 12 (<= 1.22) and TORCH_INDEX_URL=.../cu126 with a CUDA 12 base.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
# A CUDA torch, pinned, from PyTorch's CUDA index (eager/TorchScript workers and the export use it).
RUN pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md /tmp/src/
COPY model /tmp/src/model
COPY service /tmp/src/service
COPY training /tmp/src/training
COPY anysat /tmp/src/anysat
COPY benchmarks /tmp/src/benchmarks
# [gpu], never [cpu]: one ONNX Runtime, the GPU one (two would leave whichever came last in charge).
RUN set -eu; \
    echo "torch==${TORCH_VERSION}" > /tmp/torch.txt; \
    pip install -q -c /tmp/torch.txt "/tmp/src[serve,gpu]"; \
    pip check; \
    if pip show onnxruntime >/dev/null 2>&1; then echo "the CPU onnxruntime is installed beside the GPU one" >&2; exit 1; fi; \
    python -c "import torch; assert torch.version.cuda, torch.__version__"; \
    rm -rf /tmp/src /tmp/torch.txt

FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY artifacts/demo /app/artifacts/demo
RUN useradd --system --uid 10001 --create-home --home-dir /home/anysat anysat \
    && mkdir -p /exports /weights && chown anysat:anysat /exports
USER anysat
# One worker process = one set of ONNX Runtime sessions on the GPU; more per GPU: compose replicas, each bounded by
# ANYSAT_CUDA_MEM_LIMIT_GB so they fit (docs/gpu.md).
ENV ANYSAT_DEVICE=cuda ANYSAT_RUNTIME=onnx ANYSAT_PRECISION=fp16 ANYSAT_EXPORT_DIR=/exports \
    ANYSAT_CHECKPOINT=/app/artifacts/demo/encoder.safetensors ANYSAT_HEADS_DIR=/app/artifacts/demo/heads
EXPOSE 9100
CMD ["anysat", "worker"]
