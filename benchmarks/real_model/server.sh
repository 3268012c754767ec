#!/usr/bin/env bash
# Start, stop or check the local llama.cpp OpenAI-compatible server the real-model
# benchmark talks to (set up by setup.sh).
#
#   bash benchmarks/real_model/server.sh start    # background; returns once GET /v1/models answers
#   bash benchmarks/real_model/server.sh stop
#   bash benchmarks/real_model/server.sh status   # exit 0 when it is up
#
# Listens on 127.0.0.1:${PORT:-8765} only; model alias "qwen-0.5b". Pid and log:
# $DIR/server.pid and $DIR/server.log, DIR=${LLMFRAME_REAL_MODEL_DIR:-$HOME/.cache/llmframe-real-model}.
set -euo pipefail

DIR="${LLMFRAME_REAL_MODEL_DIR:-$HOME/.cache/llmframe-real-model}"
PORT="${PORT:-8765}"
MODEL="$DIR/qwen2.5-coder-0.5b-instruct-q4.gguf"
ALIAS="${MODEL_ALIAS:-qwen-0.5b}"
N_CTX="${N_CTX:-8192}"
N_THREADS="${N_THREADS:-2}"
PIDFILE="$DIR/server.pid"
LOG="$DIR/server.log"
URL="http://127.0.0.1:$PORT/v1/models"
START_TIMEOUT="${START_TIMEOUT:-180}"

say() { printf '[server %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

pid_alive() {
    [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

answers() {
    curl --silent --fail --max-time 5 "$URL" >/dev/null 2>&1
}

start() {
    if pid_alive && answers; then
        say "already running: pid $(cat "$PIDFILE"), $URL"
        return
    fi
    if answers; then
        say "port $PORT already answers /v1/models but not from $PIDFILE's process; not starting another"
        exit 1
    fi
    [[ -x "$DIR/venv/bin/python" ]] || { say "no venv at $DIR/venv: run setup.sh first"; exit 1; }
    [[ -f "$MODEL" ]] || { say "no model at $MODEL: run setup.sh first"; exit 1; }
    say "starting llama_cpp.server on 127.0.0.1:$PORT (log: $LOG)"
    # setsid: its own session, so it outlives the shell that started it (run.sh stops it).
    setsid "$DIR/venv/bin/python" -m llama_cpp.server \
        --model "$MODEL" --model_alias "$ALIAS" \
        --n_ctx "$N_CTX" --n_threads "$N_THREADS" \
        --host 127.0.0.1 --port "$PORT" \
        >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local waited=0
    until answers; do
        if ! pid_alive; then
            say "the server exited during start-up; last lines of $LOG:"
            tail -n 20 "$LOG"
            rm -f "$PIDFILE"
            exit 1
        fi
        if ((waited >= START_TIMEOUT)); then
            say "no answer from $URL after ${START_TIMEOUT}s; stopping it"
            stop
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "up after ${waited}s: pid $(cat "$PIDFILE"), $URL"
}

stop() {
    if ! pid_alive; then
        say "not running"
        rm -f "$PIDFILE"
        return
    fi
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid still alive after 15s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    say "stopped pid $pid"
}

status() {
    if pid_alive && answers; then
        say "running: pid $(cat "$PIDFILE"), $URL"
    else
        say "not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
