#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, on a machine with an NVIDIA GPU, CUDA and PyTorch but no
# ctranslate2: installs the wheels in .whl/ (ctranslate2, traitlets, platformdirs) to /tmp/site,
# then runs a dry run and the reference-shape benchmark. Output: $OUT (default /tmp/out).
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# ctranslate2 4.8.5 wheels open libcublas.so.12; a CUDA 13 image may only have cuBLAS 13.
if ! ldconfig -p | grep -q 'libcublas.so.12'; then
    lib=$(python3 - <<'PY'
import glob, os, sys
for root in sys.path + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]:
    hits = glob.glob(os.path.join(root, "**", "libcublas.so.12*"), recursive=True) if os.path.isdir(root) else []
    if hits:
        print(os.path.dirname(hits[0])); break
PY
)
    if [ -n "$lib" ]; then export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; echo "cuBLAS 12 from $lib" | tee -a "$OUT/gpu.txt"
    else echo "no libcublas.so.12 on this machine" | tee -a "$OUT/gpu.txt"; ldconfig -p | grep -i cublas | head -5; find / -name 'libcublas.so*' 2>/dev/null | head -5; fi
fi
python3 -c "import ctranslate2 as c; print('ctranslate2', c.__version__, 'cuda devices', c.get_cuda_device_count(), sorted(c.get_supported_compute_types('cuda')))" 2>&1 | tee -a "$OUT/gpu.txt"
python3 benchmarks/gpu_reference_shape.py --device cuda --small --tokens 32 --runs 1 --model /tmp/small 2>&1 | tail -5
python3 benchmarks/gpu_reference_shape.py --device cuda --tokens "${TOKENS:-256}" --runs "${RUNS:-3}" --json "$OUT/gpu_reference_shape.json" 2>&1 | tee "$OUT/gpu_reference_shape.log"
