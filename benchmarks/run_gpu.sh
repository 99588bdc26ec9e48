#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, for a machine with an NVIDIA GPU, CUDA, PyTorch, transformers and
# numpy but no ctranslate2 (this workplace's device image). First, here: `bash benchmarks/gpu_wheels.sh`.
# Then on the GPU machine, carrying .whl: `bash benchmarks/run_gpu.sh`. Writes to $OUT (default /tmp/out):
# gpu.txt (card, driver, cuBLAS, agreement), reference_shape.json and .log. About 4-6 minutes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
say() { echo "$*" | tee -a "$OUT/gpu.txt"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "no wheels: run 'bash benchmarks/gpu_wheels.sh' first and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"

# ctranslate2 4.x wheels dlopen libcublas.so.12 and look each function up by name. A CUDA 13 image has
# only cuBLAS 13; its GEMM functions keep their names and signatures, so it is offered under the old
# name, and the agreement check below says whether the results are right.
find_lib() { python3 - "$1" <<'PY'
import glob, os, sys
roots = sys.path + ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]
for root in roots:
    hits = sorted(glob.glob(os.path.join(root, "**", sys.argv[1]), recursive=True)) if os.path.isdir(root) else []
    if hits:
        print(hits[0]); break
PY
}
if ! ldconfig -p | grep -q 'libcublas.so.12'; then
    lib12=$(find_lib 'libcublas.so.12*')
    if [ -n "$lib12" ]; then
        export LD_LIBRARY_PATH="$(dirname "$lib12"):${LD_LIBRARY_PATH:-}"; say "cuBLAS 12: $lib12"
    else
        lib13=$(find_lib 'libcublas.so.13*')
        [ -n "$lib13" ] || { say "neither cuBLAS 12 nor 13 found"; exit 1; }
        mkdir -p /tmp/cublas-shim && ln -sf "$lib13" /tmp/cublas-shim/libcublas.so.12
        export LD_LIBRARY_PATH="/tmp/cublas-shim:$(dirname "$lib13"):${LD_LIBRARY_PATH:-}"
        say "no cuBLAS 12: using cuBLAS 13 ($lib13) under the name libcublas.so.12"
    fi
fi
say "$(python3 -c "import ctranslate2 as c; print('ctranslate2', c.__version__, 'cuda devices', c.get_cuda_device_count(), sorted(c.get_supported_compute_types('cuda')))" 2>&1)"
# Any cuBLAS 12 anywhere on the image (another Python, a conda, a pip cache) would make the run valid.
say "cuBLAS 12 anywhere: $(timeout 60 find / -xdev \( -name 'libcublas.so.12*' -o -name 'libcublasLt.so.12*' \) 2>/dev/null | head -5 | tr '\n' ' ')"
# Which compute types give the CPU's logits: the first that agrees (top-1 >= 0.9) is measured.
chosen=""
for ct in ${COMPUTE_TYPES:-int8_float16 int8 float16 bfloat16}; do
    line=$(python3 benchmarks/reference_shape.py --device cuda --check --compute-type "$ct" --model /tmp/small 2>&1 | tr -d '\n ')
    say "agreement $ct: $line"
    top1=$(echo "$line" | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read())["top1_agreement"])
except Exception: print(0)')
    if [ -z "$chosen" ] && python3 -c "import sys; sys.exit(0 if float('$top1') >= 0.9 else 1)"; then chosen=$ct; fi
done
[ -n "$chosen" ] || { say "no compute type agrees with the CPU: nothing measured"; exit 0; }
# The paths that read logits back (logprobs, next_tokens, schema=) on the GPU against the CPU.
python3 benchmarks/gpu_paths.py --compute-type "$chosen" > "$OUT/gpu_paths.json" 2>&1; say "paths: $(tr -d '\n ' < "$OUT/gpu_paths.json" | cut -c1-1500)"
[ "${SHAPE:-1}" = 1 ] || exit 0
say "measuring with $chosen"
python3 benchmarks/reference_shape.py --device cuda --compute-type "$chosen" --tokens "${TOKENS:-256}" --runs "${RUNS:-3}" \
    --json "$OUT/reference_shape.json" 2>&1 | tee "$OUT/reference_shape.log"
