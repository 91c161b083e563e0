#!/bin/sh
# SIGKILL mid-write, 20 seeded trials per format (qcow2, VDI): see tests/kill9.rs.
#   vudev/formats/tests/kill9.sh [TRIALS [FIRST_SEED]]
set -e
cd "$(dirname "$0")/../../.."
KILL9_TRIALS=${1:-20} KILL9_SEED=${2:-1} \
    cargo test -p vudev-formats --test kill9 -- --nocapture kill9_mid_write
