#!/usr/bin/env bash
# The one test command: Rust unit/integration tests, then the Python
# client-compatibility suite against the freshly built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "setup"
./scripts/setup-tests.sh

section "cargo build"
# --bins too: the Python suite drives target/debug/fluxo. Building it as
# part of the workspace keeps one feature set (a separate `-p fluxo` build
# would rebuild dependencies with different features).
cargo build --workspace --bins --tests

section "cargo test"
# The differential test checks views against DuckDB from the test venv.
FLUXO_DUCKDB_PYTHON="$PWD/.venv/bin/python" cargo test --workspace

section "python client-compatibility tests"
FLUXO_BIN="$PWD/target/debug/fluxo" .venv/bin/python -m pytest -q tests/python
