# anysat-serve: one image for the gateway and the workers (CPU; see deploy/README.md for GPU).
# Not built in CI (no container engine on the project's machines); kept in step with scripts/setup.sh.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# torch first, from the CPU index: an unpinned torch would pull a multi-GB CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY model model
COPY service service
COPY training training
COPY anysat anysat
COPY benchmarks benchmarks
COPY artifacts artifacts
# Editable: the demo encoder and heads are found next to the sources (artifacts/demo).
RUN pip install -e ".[serve]"

ENV ANYSAT_HOST=0.0.0.0 ANYSAT_EXPORT_DIR=/exports
EXPOSE 8000
CMD ["anysat", "serve"]
