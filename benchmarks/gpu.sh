#!/usr/bin/env bash
# The device script: on a machine with an NVIDIA GPU, install the GPU extra, check the providers, and run
# benchmarks/gpu.py (raw rows for tiny and base, then serving with a GPU worker); results in $OUT/gpu.json
# ($OUT defaults to benchmarks/results-gpu). The whole run, install included, stays under 8 minutes: what is left
# of ANYSAT_GPU_TOTAL_S (default 470 s) after the install is the benchmark's --budget-s.
#
#   bash benchmarks/gpu.sh                      # everything
#   bash benchmarks/gpu.sh --sizes base --tensorrt
#
# The venv sees the machine's own packages (--system-site-packages) so the machine's CUDA torch is used and never
# replaced (pip is constrained to it: nothing here can pull another torch). .[serve,gpu] comes from the index, or
# with no network from wheels in $ANYSAT_WHEELS (pip --no-index --find-links). An install that cannot complete is
# not fatal: the benchmark records each row it cannot run (no CUDA provider: the ONNX Runtime rows; no serving
# stack: the serving part) as skipped, with the reason. Without a GPU it exits 2 at once, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
export OUT=${OUT:-benchmarks/results-gpu}
mkdir -p "$OUT"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU here (nvidia-smi finds none); run it on a machine with one" >&2
  echo '{"error": "no NVIDIA GPU: nvidia-smi finds none"}' > "$OUT/gpu.json"
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"

PY=${PYTHON:-python3}
VENV=${ANYSAT_GPU_VENV:-/tmp/anysat-gpu-venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! torch_version=$(python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "benchmarks/gpu.sh: no torch in $PY; install a CUDA build of torch first (the script never installs one)" >&2
  exit 2
fi
echo "torch==$torch_version" > "$VENV/torch-constraint.txt"
pip_args=(-q --retries 1 --timeout 10 -c "$VENV/torch-constraint.txt")  # no network: fail fast
if [ -n "${ANYSAT_WHEELS:-}" ]; then
  pip_args+=(--no-index --find-links "$ANYSAT_WHEELS" --no-build-isolation)
fi
if python -m pip install "${pip_args[@]}" -e ".[serve,gpu]" >"$OUT/pip.log" 2>&1; then
  echo "# installed .[serve,gpu] (torch $torch_version kept)"
else
  echo "# could not install .[serve,gpu] (no network? see $OUT/pip.log); running from the source tree with what" \
       "is installed: rows that need a missing part are recorded as skipped" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The packaging trap this project's extras avoid: the CPU onnxruntime beside onnxruntime-gpu hides CUDA.
python - <<'EOF' | tee "$OUT/providers.txt"
import importlib.metadata as md

dists = []
for name in ("onnxruntime", "onnxruntime-gpu"):
    try:
        dists.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print("installed:", ", ".join(dists) or "no ONNX Runtime")
if len(dists) == 2:
    print("WARNING: both ONNX Runtime builds are installed; whichever was installed last is the one imported")
try:
    import onnxruntime as ort
except ImportError as exc:
    print("onnxruntime: not importable:", exc)
else:
    print("onnxruntime", ort.__version__, "from", ort.__file__, "providers:", ort.get_available_providers())
EOF
elapsed=$(( $(date +%s) - started ))
budget=$(( ${ANYSAT_GPU_TOTAL_S:-470} - elapsed ))
[ "$budget" -ge 120 ] || budget=120
echo "# install took ${elapsed} s; benchmark budget ${budget} s"
set -o pipefail
PYTHONUNBUFFERED=1 timeout $(( budget + 60 )) python -m benchmarks.gpu --out "$OUT" --budget-s "$budget" "$@" \
  2>&1 | tee "$OUT/gpu.log"
