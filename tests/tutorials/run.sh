#!/bin/sh
# The VUOS tutorial twins (docs/TUTORIAL-VUOS.md): each of vudev.py, vufuse.py
# and vufs.py runs in a real `umvu bash`, once with VUOS's C modules and once
# with this workspace's, then a table shows every step side by side.
#
#   tests/tutorials/run.sh            # builds our modules (cargo build --release) first
#   NO_BUILD=1 tests/tutorials/run.sh # uses what $CARGO_TARGET_DIR/release already has
#   tests/tutorials/run.sh -v         # extra arguments go to every script (-v: show all output)
#
# Exit status: 0 all passed, 1 a step failed, 77 skipped (umvu or python3-pexpect missing).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${CARGO_TARGET_DIR:=$repo/target}"
export CARGO_TARGET_DIR

if ! command -v umvu >/dev/null 2>&1; then
    echo "SKIP: umvu is not on PATH (VUOS is not installed)"
    exit 77
fi
if ! python3 -c 'import pexpect' 2>/dev/null; then
    echo "SKIP: python3-pexpect is not installed"
    exit 77
fi
if [ "${NO_BUILD:-}" != 1 ]; then
    (cd "$repo" && cargo build --release -p vudevpartx -p vudevramdisk -p vudevvdi \
        -p vufusefatfs -p vufuseext2 -p vufs-module) || exit 1
fi

out=$(mktemp -d /tmp/vurs-tutorials.XXXXXX)
status=0
for t in vudev vufuse vufs; do
    for m in c ours; do
        python3 "$here/$t.py" --modules "$m" --results "$out/$t.$m" "$@"
        case $? in
            0) ;;
            77) [ -e "$out/$t.$m" ] || echo "skipped" > "$out/$t.$m.skip" ;;
            *) status=1 ;;
        esac
        echo
    done
done

python3 - "$out" <<'PY'
import os, sys
out = sys.argv[1]
print("== results (C modules | ours)")
for t in ("vudev", "vufuse", "vufs"):
    rows = {}
    order = []
    for m in ("c", "ours"):
        p = os.path.join(out, f"{t}.{m}")
        if not os.path.exists(p):
            continue
        for line in open(p):
            sec, step, st = line.rstrip("\n").split("\t")
            key = (sec, step)
            if key not in rows:
                rows[key] = {}
                order.append(key)
            rows[key].setdefault(m, []).append(st)
    sec = None
    for key in order:
        if key[0] != sec:
            sec = key[0]
            print(f"\n{t}: {sec}")
        r = rows[key]
        c = ",".join(r.get("c", ["-"]))
        o = ",".join(r.get("ours", ["-"]))
        mark = "" if c == o else "   <- differs"
        print(f"  {c:5} | {o:5}  {key[1]}{mark}")
PY
rm -rf "$out"
exit $status
