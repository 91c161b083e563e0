#!/usr/bin/env python3
"""A real tree under umvu (issue #18): untar TAR (default: /usr/include as a tar in WORK),
`find`, `ls -lR` (warm: the second one), read it all (`tar cf - | cat`) and `rm -rf`, on

  host          the host directory, no umvu (the reference of every ratio)
  umvu          the same directory under umvu with no module (umvu's own cost per syscall)
  vufs-bind     this project's vufs.so, `vumount -t vufs` of a host directory
  vufs-cow      this project's vufs.so, `-o cow` over an empty lower tree
  c-vufs-cow    the C vufs.so of vuos (the anchor), `-o cow`
  ext4          this project's vufuseext2.so on a 2 GiB ext4 image (e2fsck -fn after)

each configuration in its own umvu session per round, rounds rotated; medians of --runs.
Prints seconds and each figure's ratio to the host's, and to the same figure under bare
umvu (what the module adds). The Rust modules are installed into a private HOME
(modules/install.sh --dest), the C ones are umvu's own. Skips with a reason without umvu.

Usage: tree_umvu.py [--runs N] [--work DIR] [--tar TAR] [--rows R1,R2] [--no-build]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

FIGURES = ["untar", "find", "lsR_warm", "read_all", "rm_rf"]
ROWS = ["host", "umvu", "vufs-bind", "vufs-cow", "c-vufs-cow", "ext4"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw)


def timed(name, command):
    """A shell snippet that runs `command` and prints 'FIGURE name seconds'."""
    return (f's=$(date +%s.%N); {command}; e=$(date +%s.%N); '
            f'echo "FIGURE {name} $(echo "$e - $s" | bc -l)"')


def workload(tar, tree):
    """The five figures on `tree` (a directory that exists and is empty)."""
    return "; ".join([
        timed("untar", f"tar -C {tree} -xf {tar}"),
        timed("find", f"find {tree} > /dev/null"),
        f"ls -lR {tree} > /dev/null",
        timed("lsR_warm", f"ls -lR {tree} > /dev/null"),
        timed("read_all", f"tar -C {tree} -cf - . | cat > /dev/null"),
        timed("rm_rf", f"rm -rf {tree}/*"),
    ])


def script_for(row, args):
    w = args.work
    if row in ("host", "umvu"):
        return f"rm -rf {w}/plain; mkdir -p {w}/plain; {workload(args.tar, w + '/plain')}"
    if row == "vufs-bind":
        return (f"rm -rf {w}/src {w}/view; mkdir -p {w}/src {w}/view; vu_insmod vufs; "
                f"vumount -t vufs {w}/src {w}/view; {workload(args.tar, w + '/view')}; vuumount {w}/view")
    if row in ("vufs-cow", "c-vufs-cow"):
        return (f"rm -rf {w}/layer {w}/lower; mkdir -p {w}/layer {w}/lower; vu_insmod vufs; "
                f"vumount -t vufs -o cow {w}/layer {w}/lower; {workload(args.tar, w + '/lower')}; "
                f"vuumount {w}/lower")
    if row == "ext4":
        return (f"rm -f {w}/ext.img; truncate -s 2G {w}/ext.img; mkfs.ext4 -q -F {w}/ext.img; "
                f"mkdir -p {w}/mnt; vu_insmod vufuse; vumount -t vufuseext2 -o rw+ {w}/ext.img {w}/mnt; "
                f"{workload(args.tar, w + '/mnt')}; vuumount {w}/mnt; e2fsck -fn {w}/ext.img > /dev/null")
    raise ValueError(row)


def run_row(row, args):
    """One run of `row`: {figure: seconds}."""
    script = script_for(row, args)
    home = args.c_home if row == "c-vufs-cow" else args.rust_home
    if row == "host":
        argv = ["bash", "-c", script]
    else:
        argv = ["umvu", "bash", "-c", script]
    env = dict(os.environ, HOME=home)
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200, cwd=args.work)
    figures = {}
    for line in r.stdout.splitlines():
        if line.startswith("FIGURE "):
            _, name, secs = line.split()
            figures[name] = float(secs)
    if r.returncode != 0 or len(figures) != len(FIGURES):
        sys.exit(f"{row}: run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/tree-umvu")
    ap.add_argument("--tar")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not shutil.which("umvu"):
        print("skipped: umvu is not installed")
        return
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../.."))
    os.makedirs(args.work, exist_ok=True)
    args.rust_home = os.path.join(args.work, "rust-home")
    args.c_home = os.path.join(args.work, "c-home")
    os.makedirs(os.path.join(args.rust_home, ".vu/modules"), exist_ok=True)
    os.makedirs(args.c_home, exist_ok=True)
    if not args.no_build:
        sh(f"{repo}/modules/install.sh --dest {args.rust_home}/.vu/modules")
    if not args.tar:
        args.tar = os.path.join(args.work, "include.tar")
        if not os.path.exists(args.tar):
            sh(f"tar -C /usr -cf {args.tar} include")
    rows = args.rows.split(",")
    results = {row: {f: [] for f in FIGURES} for row in rows}
    for run in range(args.runs):
        order = rows[run % len(rows):] + rows[:run % len(rows)]
        for row in order:
            sh("sync; echo 3 > /proc/sys/vm/drop_caches")
            for f, secs in run_row(row, args).items():
                results[row][f].append(secs)
            print(f"[run {run + 1}] {row} done", file=sys.stderr, flush=True)
    med = {row: {f: statistics.median(v) for f, v in figs.items()} for row, figs in results.items()}
    print(f"\nseconds, median of {args.runs} (min / median); tree: {args.tar}\n")
    print("| | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---|" * len(FIGURES))
    for row in rows:
        cells = [f"{min(results[row][f]):.3f} / {med[row][f]:.3f}" for f in FIGURES]
        print(f"| {row} | " + " | ".join(cells) + " |")
    for base in ("host", "umvu"):
        if base not in med:
            continue
        print(f"\ntime / time of `{base}` (medians)\n")
        print("| | " + " | ".join(FIGURES) + " |")
        print("|---|" + "---|" * len(FIGURES))
        for row in rows:
            if row == base or (base == "umvu" and row == "host"):
                continue
            cells = [f"{med[row][f] / med[base][f]:.2f}" for f in FIGURES]
            print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
