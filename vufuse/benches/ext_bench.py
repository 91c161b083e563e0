#!/usr/bin/env python3
"""ext4 benchmark: this project's fuseext2 vs fuse2fs vs kernel ext4 on a loop device, one run.

Figures (ANCHORS.md B.1 method): sequential write of 256 MiB (dd bs=1M
conv=fsync), cold and warm sequential read, create+write 4 KiB+stat of 5,000
files named file_NNNNN.dat in one directory (then sync), and `ls -l` of them
cold. Each FUSE daemon runs in the foreground so its peak RSS (VmHWM) can be
read before unmount. Needs root (drop_caches, mount).

Usage: ext_bench.py [--ours PATH] [--runs N] [--dir DIR] [--no-busy-poll]
  fuse2fs (Debian package fuse2fs) is skipped with a note when unavailable.
  --no-busy-poll adds a row for fuseext2 mounted with -o no_busy_poll (a
  thread sleeping in read(/dev/fuse) between requests, as other daemons do).
  The runs are interleaved (one run of each in turn), so a slow spell of the
  machine does not land on one row only.
"""

import argparse
import os
import shutil
import statistics
import sys

from benchlib import MIB, Daemon, empty_results, measure_mounted, print_table, sh, speedups


def fresh_image(path, size_mib):
    if os.path.exists(path):
        os.unlink(path)
    sh(f"truncate -s {size_mib}M {path} && mkfs.ext4 -q -F {path}")


class Kernel:
    """A kernel ext4 loop mount, with the Daemon interface."""

    def __init__(self, binary, image, mnt, options):
        self.mnt = mnt
        sh(f"mount -o loop {image} {mnt}")

    def peak_rss_kib(self):
        return 0

    def unmount(self):
        sh(f"umount {self.mnt}")


def bench_fuse(name, binary, options, args, source, kind=None):
    """One run of every figure on a fresh image; returns ({figure: [seconds]}, peak RSS KiB)."""
    kind = kind or Daemon
    image = os.path.join(args.dir, f"{name}.img")
    mnt = os.path.join(args.dir, f"mnt-{name}")
    os.makedirs(mnt, exist_ok=True)
    results = empty_results()
    fresh_image(image, 2048)
    rss = measure_mounted(lambda: kind(binary, image, mnt, options), mnt, source, args.timeout, results)
    fsck = sh(f"e2fsck -fn {image}", check=False)
    if fsck.returncode != 0:
        print(f"WARNING: {name}: e2fsck -fn after the run: {fsck.stdout.strip()[-500:]}", file=sys.stderr)
    return results, rss


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default=os.path.join(repo, "target/release/fuseext2"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--dir", default=os.path.join(repo, "target/ext-bench"))
    p.add_argument("--no-busy-poll", action="store_true", help="add a row for fuseext2 -o no_busy_poll")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    source = "/dev/shm/ext-bench-src.bin"
    if not os.path.exists(source):
        sh(f"head -c {256 * MIB} /dev/urandom > {source}")

    # (row name, binary, options, kind): one run of each in turn, `runs` times.
    plan = [("fuseext2 (this project)", "ours", args.ours, "rw+", Daemon)]
    if args.no_busy_poll:
        plan.append(("fuseext2 -o no_busy_poll", "ours-nopoll", args.ours, "rw+,no_busy_poll", Daemon))
    ours_rows = len(plan)
    if shutil.which("fuse2fs"):
        plan.append(("fuse2fs 1.47", "fuse2fs", shutil.which("fuse2fs"), "rw", Daemon))
    else:
        print("note: fuse2fs not installed, its column is skipped", file=sys.stderr)
    plan.append(("kernel ext4 (loop)", "kernel", None, "", Kernel))
    merged = {row[0]: ({}, 0) for row in plan}
    for _ in range(args.runs):
        for row_name, name, binary, options, kind in plan:
            res, rss = bench_fuse(name, binary, options, args, source, kind=kind)
            acc, peak = merged[row_name]
            for k, values in res.items():
                acc.setdefault(k, []).extend(values)
            merged[row_name] = (acc, max(peak, rss))
    rows = [(row[0], *merged[row[0]]) for row in plan]

    print_table(rows, f"seconds, min / median of {args.runs}; 256 MiB file on a 2 GiB ext4 image")
    for ours_name, ours, _ in rows[:ours_rows]:
        for name, res, _ in rows[ours_rows:]:
            print(f"{ours_name}: speed-up vs {name}: " + speedups(ours, res, 2))
    mib_s = 256 / statistics.median(rows[0][1]["read_warm"])
    print(f"our warm sequential read: {mib_s / 1024:.2f} GiB/s")


if __name__ == "__main__":
    main()
