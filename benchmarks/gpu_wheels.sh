#!/usr/bin/env bash
# Run here, before the GPU check: downloads into .whl/ (git-ignored) the wheels that the GPU machine's
# image lacks, for its Python 3.12: ctranslate2 (about 43 MB), traitlets, and what gpu_paths.py's paths import
# (llguidance, pandas, the markdown renderer and sanitiser; about 18 MB): 61 MB in all, under the 64 MiB a
# device call carries. The image already has numpy, transformers, tokenizers, huggingface_hub, pyyaml and torch.
# Then the device call carries .whl and runs `bash benchmarks/run_gpu.sh` (see BENCHMARKS.md, "GPU").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "ctranslate2==${CT2_VERSION:-4.8.5}" traitlets llguidance pandas python-dateutil tzdata \
    nh3 markdown-it-py mdit-py-plugins mdurl linkify-it-py uc-micro-py pygments platformdirs tqdm
ls -l .whl
