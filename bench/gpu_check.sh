#!/usr/bin/env bash
# The prepared GPU check (at most 5 minutes on one GPU); on a machine without CUDA it runs the
# same steps on the CPU with smaller sizes and skips the CUDA tests (they report "skipped").
#
#   bash bench/gpu_check.sh            # from the repository root; PYTHON=... picks python
#
# Steps: CUDA tests (tests/crossbar/test_read_devices.py); bench_linear.py on the device
# (analog read with read noise physical and off vs F.linear, programming speed); bench_conformer.py
# on the device (paper-size encoder, digital / fake_quant / analog with noise physical and off,
# programming time of the whole model, the TED-LIUM 2 test-split pass extrapolated from the
# measured throughput). Prints one summary table; logs go to $OUT (or /tmp/gpu_check).
#
# It never installs torch (the GPU machine has its own). SpeechBrain, HyperPyYAML, synaptogen
# and their non-torch dependencies missing there are installed from bench/wheels/ (ignored by
# git) in pip's no-index mode. Fill that folder beforehand, where a registry is reachable:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 --platform any -d bench/wheels \
#     speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml==0.18.17 ruamel.yaml.clib \
#     synaptogen==0.2.0 soundfile==0.14.0 cffi==2.1.1 pycparser
#
# (numpy, scipy, sentencepiece, torchaudio, tqdm, pyyaml, matplotlib and pytest are assumed
# present, as on the project's GPU machine.) The wheels folder must travel with the checkout
# (e.g. named in the device tool's carry).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/gpu_check}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import speechbrain, hyperpyyaml, synaptogen, soundfile" 2>/dev/null; then
    SITE=/tmp/gpu_check_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" bench/wheels/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$SITE"
    "$PY" -c "import speechbrain, hyperpyyaml, synaptogen, soundfile" || exit 1
fi
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    DEVICE=cuda; LINEAR=(--repeats 5); CONFORMER=(--layers 12 --repeats 3 --threads 8)
else  # CPU: the same steps, smaller (2 encoder layers), so that the script itself is checked
    DEVICE=cpu; LINEAR=(--repeats 2 --frames 400); CONFORMER=(--layers 2 --repeats 1 --threads 2)
fi
echo "gpu_check on $DEVICE: $("$PY" -c "import torch; print('torch', torch.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')")"

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local code=$?
    echo "$name: exit $code in $((SECONDS - start)) s" >>"$LOGS/steps.txt"
    [ $code -eq 0 ] || { status=1; echo "FAILED $name (exit $code), see $LOGS/$name.log"; tail -5 "$LOGS/$name.log"; }
}
: >"$LOGS/steps.txt"
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/crossbar/test_read_devices.py
step bench_linear 150 "$PY" bench/bench_linear.py --device "$DEVICE" "${LINEAR[@]}" \
    --programming-repeats 1
for noise in physical off; do
    step "bench_conformer_$noise" 150 "$PY" bench/bench_conformer.py --device "$DEVICE" \
        --read-noise "$noise" "${CONFORMER[@]}"
done

echo
echo "| check | result |"
echo "| --- | --- |"
echo "| CUDA tests | $(tail -1 "$LOGS/cuda_tests.log") |"
grep -h " noise=" "$LOGS/bench_linear.log" | sed -E \
    's/^(.*noise=[a-z]+) +frames=[0-9]+: analog +([0-9.]+ ms), F.linear +([0-9.]+ ms), ratio +([0-9.]+x).*peak alloc.*ratio +([0-9.]+x).*/| linear \1 | time \2 vs \3 (\4), peak memory \5 |/'
grep -h "^programming on" "$LOGS/bench_linear.log" | sed -E 's/^([^:]*): (.*)$/| \1 | \2 |/'
for noise in physical off; do
    log="$LOGS/bench_conformer_$noise.log"
    grep -h "^programming" "$log" | sed -E "s/^programming: (.*)$/| encoder programming | \1 |/"
    grep -hE "^(digital|fake_quant|analog) +[0-9]" "$log" | awk -v n="$noise" \
        '{printf "| encoder %s (noise %s) | %s s, %s x digital |\n", $1, n, $2, $3}'
    grep -h "^TED-LIUM 2.*analog" "$log" | sed -E "s/^(.*): (.*)$/| \1 (noise $noise) | \2 |/"
done
cat "$LOGS/steps.txt"
exit $status
