#!/usr/bin/env bash
# The one test command: Rust unit/integration tests, then the Python
# client-compatibility suite against the freshly built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "setup"
./scripts/setup-tests.sh

section "cargo build"
cargo build --workspace --tests
# The test suite drives the fluxo binary itself; make sure it is built.
cargo build -p fluxo --bin fluxo

section "cargo test"
cargo test --workspace

section "python client-compatibility tests"
FLUXO_BIN="$PWD/target/debug/fluxo" .venv/bin/python -m pytest -q tests/python
