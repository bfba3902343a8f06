# Sourced by the benchmark scripts: `serve_in_background PORT LOG SERVE-ARGS…` starts
# `llama-gpu serve` on PORT with its log in LOG, stops it when the script exits, and
# returns once it answers /health; its pid is in $server.
serve_in_background() {
    local port=$1 log=$2
    shift 2
    ./target/release/llama-gpu serve --port "$port" "$@" > "$log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        curl -sf "localhost:$port/health" >/dev/null && return 0
        sleep 1
    done
    echo "the server on port $port never answered /health (log: $log)" >&2
    return 1
}
