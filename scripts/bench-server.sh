# Sourced by the benchmark scripts: builds the release binary, installs the
# Python clients, and starts a server on a free port in a temporary data
# directory that is removed on exit. Sets $bin, $py, $data, $boot.
cargo build --release -p fluxo >/dev/null
./scripts/setup-tests.sh >/dev/null
bin=$PWD/target/release/fluxo
py=$PWD/.venv/bin/python
data=$(mktemp -d "$PWD/.bench-data.XXXX")
log=$(mktemp)
trap 'kill $(cat "$data.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$data" "$data.pid"' EXIT

FLUXO_LOG=warn "$bin" serve --data-dir "$data" --kafka-addr 127.0.0.1:0 >"$log" 2>&1 &
echo $! >"$data.pid"
for _ in $(seq 100); do grep -q "kafka listening" "$log" && break; sleep 0.1; done
boot=$(sed -n 's/^fluxo: kafka listening on //p' "$log")
if [ -z "$boot" ]; then echo "the server did not start:" >&2; cat "$log" >&2; exit 1; fi
echo "machine: $(nproc) cores, $(uname -r); server at $boot, data in $data"
