# anysat-serve: one CPU image for the gateway (`anysat serve`), the workers (`anysat worker`) and the export
# pre-warm (`python deploy/warm.py`). GPU workers: deploy/gpu.Dockerfile.
#
#   docker build -t anysat-serve .                                   # online: python:3.11-slim + PyPI + torch CPU index
#   bash deploy/docker/wheelhouse.sh && docker build -t anysat-serve .   # offline: installs from build/wheelhouse
#   docker build --build-arg BASE_IMAGE=anysat/python:bookworm .     # a stand-in base (deploy/docker/base.sh)
#
# With build/wheelhouse in the build context, every package comes from it (`--no-index`): no network is needed.
# Without it, torch comes from PyTorch's CPU index (an unpinned torch from PyPI is a multi-GB CUDA build) and the
# rest from PyPI. Either way the image holds no CUDA library.
ARG BASE_IMAGE=python:3.11-slim

# --- build: the virtualenv, installed from the wheelhouse (or online). Only /opt/venv leaves this stage, so the
# wheels copied in never weigh on the image.
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=serve,cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# A virtualenv on every base: Debian's python3 refuses system-wide pip installs (PEP 668), the official image not.
RUN python3 -m venv /opt/venv

# Dependencies first, in their own layer: it changes only when pyproject.toml's dependencies do.
# The globs match nothing when there is no wheelhouse; pyproject.toml keeps the COPY from being empty.
COPY pyproject.toml build/wheelhouse/dep[s] /tmp/wheels/
RUN set -eu; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheelhouse (no network)"; \
        pip install -q --no-index --find-links /tmp/wheels /tmp/wheels/*.whl; \
    else \
        echo "no wheelhouse in the build context: torch from ${TORCH_INDEX_URL}"; \
        pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    fi; \
    rm -rf /tmp/wheels

COPY pyproject.toml README.md /tmp/src/
COPY model /tmp/src/model
COPY service /tmp/src/service
COPY training /tmp/src/training
COPY anysat /tmp/src/anysat
COPY benchmarks /tmp/src/benchmarks
COPY scene /tmp/src/scene
COPY build/wheelhouse/projec[t] pyproject.toml /tmp/project/
RUN set -eu; \
    if ls /tmp/project/anysat_serve-*.whl >/dev/null 2>&1; then \
        pip install -q --no-index --no-deps /tmp/project/anysat_serve-*.whl; \
    else \
        pip install -q "/tmp/src[${EXTRAS}]"; \
    fi; \
    pip check; \
    python -c "import torch; assert '+cu' not in torch.__version__ and not torch.version.cuda, torch.__version__"; \
    rm -rf /tmp/src /tmp/project

# --- the image
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The demo encoder and head (served when no official weights are mounted) and the export pre-warm.
COPY artifacts/demo /app/artifacts/demo
COPY deploy/warm.py deploy/warm.json /app/deploy/

# Non-root. /exports and /jobs are created here so fresh named volumes mounted on them inherit this owner.
RUN useradd --system --uid 10001 --create-home --home-dir /home/anysat anysat \
    && mkdir -p /exports /jobs /weights && chown anysat:anysat /exports /jobs
USER anysat

ENV ANYSAT_HOST=0.0.0.0 ANYSAT_PORT=8000 ANYSAT_EXPORT_DIR=/exports \
    ANYSAT_CHECKPOINT=/app/artifacts/demo/encoder.safetensors ANYSAT_HEADS_DIR=/app/artifacts/demo/heads
EXPOSE 8000 9100
# The gateway's readiness (Redis reachable and a live worker). Workers override it in docker-compose.yml.
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ANYSAT_PORT', '8000'), timeout=3)"]
CMD ["anysat", "serve"]
