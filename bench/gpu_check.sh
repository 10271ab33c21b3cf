#!/usr/bin/env bash
# Run the benchmarks on an NVIDIA GPU and write everything under bench/results/gpu/.
# First the per-image model time at batch 1 to 32 for torch on CUDA, for ONNX Runtime with
# the CUDA provider (when onnxruntime-gpu is installed) and for a TensorRT engine (when the
# tensorrt package is installed). Then the full `python -m bench.run` on the GPU.
#
#   bench/gpu_check.sh [WEIGHTS.pt]     # default: service/models/sonomask-demo-n.pt
#
# NOTE: written without access to a GPU, so this script has never run. Expect to fix small
# things on first use; the CPU benchmarks in docs/benchmarks.md are the measured ones.
set -euo pipefail
cd "$(dirname "$0")/.."

weights="${1:-service/models/sonomask-demo-n.pt}"
python=".venv/bin/python"
out="bench/results/gpu"
batch_sizes=(1 2 4 8 16 32)
export YOLO_OFFLINE=1

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed); nothing to do" >&2
    exit 1
fi
if ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: torch sees no CUDA device; install the CUDA build of torch" >&2
    exit 1
fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"

backends=(torch)
if "$python" - <<'EOF'
import sys
import onnxruntime
sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())
EOF
then
    backends+=(onnx)
else
    echo "gpu_check: onnxruntime has no CUDA provider; skipping the onnx backend" >&2
fi

engine="${weights%.pt}.engine"
if "$python" -c 'import tensorrt' 2>/dev/null; then
    if [ ! -f "$engine" ]; then
        echo "gpu_check: building $engine (FP16, dynamic batch up to 32)"
        "$python" - "$weights" <<'EOF'
import sys
from pathlib import Path

from ultralytics import YOLO

from service.detection.loading import ModelCard

weights = sys.argv[1]
imgsz = ModelCard.read(Path(weights)).imgsz or 320
YOLO(weights, task="detect").export(
    format="engine", dynamic=True, batch=32, half=True, imgsz=imgsz, device=0
)
EOF
    fi
    backends+=(tensorrt)
else
    echo "gpu_check: the tensorrt package is not installed; skipping the TensorRT engine" >&2
fi

for backend in "${backends[@]}"; do
    echo "gpu_check: model time, backend $backend, batch ${batch_sizes[*]}"
    "$python" -m bench.model_times --backend "$backend" --model "$weights" --device cuda:0 \
        --batch-sizes "${batch_sizes[@]}" --repeats 200 --out "$out/model-$backend.json"
done

"$python" - "$out" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'backend':<10} {'batch':>5} {'ms/image':>9} {'images/s':>9}")
for path in sorted(out.glob("model-*.json")):
    result = json.loads(path.read_text())
    sizes = sorted(int(key.split("_")[1]) for key in result if key.startswith("batch_"))
    for size in sizes:
        per_image_ms = result[f"batch_{size}"]["p50_ms"]
        print(f"{result['backend']:<10} {size:>5} {per_image_ms:>9.2f} {1000 / per_image_ms:>9.0f}")
EOF

echo "gpu_check: full benchmark on cuda:0"
"$python" -m bench.run --device cuda:0 --model "$weights" --results-dir "$out" | tee "$out/run.txt"
