#!/usr/bin/env bash
# The checks a session lent a GPU machine runs there, prepared as one script (issues: the paper's
# reproduction asks what checkpoints the machine holds and Table 1 on any of the paper's seven found;
# speed asks for DeepFool's fraction of roofline on MobileNetV2 and a ResNet-50-sized model at a large
# batch, and the served throughput with ONNX Runtime's CUDA execution provider).
#
# Here, before the run (the machine cannot download; carried paths are ignored by git):
#   mkdir -p out/gpu_torch_home/hub/checkpoints && cp ~/.cache/torch/hub/checkpoints/mobilenet_v2-*.pth "$_"
# On the device (the repository root; $OUT comes back), with carry ["out/gpu_torch_home"]:
#   OUT=$OUT bash scripts/gpu_checks.sh          # about 8 minutes at most: every step has its own time limit
# Each step writes $OUT/<step>.log ending in its exit status; a failed step does not stop the others.
set -u
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -d out/gpu_torch_home ] && [ -z "${TORCH_HOME:-}" ] && export TORCH_HOME="$PWD/out/gpu_torch_home"
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, keep its output, print its tail
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit status: $?" >> "$OUT/$name.log"
  tail -n 12 "$OUT/$name.log"
}

step environment 60 $PY -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')
import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ('torchvision', 'foolbox', 'art', 'onnxruntime',
'fastapi', 'timm', 'transformers')})
import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"
$PY -m pip list > "$OUT/pip-list.txt" 2>&1
step checkpoints 90 $PY scripts/list_checkpoints.py --seconds 60 --json "$OUT/checkpoints.json"
step deepfool_mobilenet_v2 150 $PY benchmarks/deepfool_speed.py --device cuda --images 20 --repeat 16 \
    --repeats 3 --art-images 0
step deepfool_resnet50 150 $PY benchmarks/deepfool_speed.py --model resnet50 --random-weights --device cuda \
    --images 20 --repeat 16 --repeats 3 --art-images 0
step serving_cuda 120 $PY benchmarks/serving.py --device cuda --requests 20 --rounds 2
# Table 1 on the paper's architectures whose torchvision ImageNet checkpoints were found (exact names only)
found=$($PY -c "import json; rows = json.load(open('$OUT/checkpoints.json'))['files']
print(','.join(sorted({r['paper_model'] for r in rows if r['paper_model'] and not r['paper_model'].endswith('?')})))" \
    2>/dev/null)
if [ -n "$found" ]; then
  step table1_found 150 $PY -m fakegradient.cli evaluate --models "$found" --data photos --seed 0 --device cuda \
      --out "$OUT/table1_found"
else
  echo "== table1_found: none of the paper's seven ImageNet checkpoints on this machine" | tee "$OUT/table1_found.log"
fi
