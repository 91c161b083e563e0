#!/usr/bin/env python3
"""exFAT benchmark: this project's fusefatfs (exFAT driver) vs exfat-fuse, one run.

Figures as fat_bench.py (ANCHORS.md B.1 method): sequential write of 256 MiB (dd bs=1M
conv=fsync), cold and warm sequential read, create+write 4 KiB+stat of 5,000 files in one
directory (then sync), `ls -l` of them cold; peak RSS of each daemon (VmHWM). The image is
a 1 GiB file made by mkfs.exfat; exfat-fuse wants a block device, so it gets a loop device
over the same kind of image (and runs in the background: its -d, the only way to keep it in
the foreground, also logs every request). No kernel exFAT here (not in /proc/filesystems), so no kernel
column. Needs root.

Usage: exfat_bench.py [--ours PATH] [--runs N] [--dir DIR]
"""

import argparse
import os
import shutil
import statistics
import sys

from benchlib import MIB, Daemon, LoopFuseBackground, empty_results, measure_mounted, print_table, sh, speedups


def fresh_image(path, size_mib):
    if os.path.exists(path):
        os.unlink(path)
    sh(f"truncate -s {size_mib}M {path} && mkfs.exfat {path} >/dev/null")


def bench(name, binary, options, args, source, kind):
    image = os.path.join(args.dir, f"{name}.img")
    mnt = os.path.join(args.dir, f"mnt-{name}")
    os.makedirs(mnt, exist_ok=True)
    results = empty_results()
    rss = 0
    for _ in range(args.runs):
        fresh_image(image, 1024)
        rss = max(rss, measure_mounted(lambda: kind(binary, image, mnt, options), mnt, source, args.timeout, results))
        fsck = sh(f"fsck.exfat -n {image}", check=False)
        if fsck.returncode != 0:
            print(f"WARNING: {name}: fsck.exfat -n after the run: {fsck.stdout.strip()[-400:]}", file=sys.stderr)
    return results, rss


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default=os.path.join(repo, "target/release/fusefatfs"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--dir", default=os.path.join(repo, "target/exfat-bench"))
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    source = "/dev/shm/fat-bench-src.bin"
    if not os.path.exists(source):
        sh(f"head -c {256 * MIB} /dev/urandom > {source}")
    rows = [("fusefatfs exFAT (this project)", *bench("ours", args.ours, "rw+", args, source, Daemon))]
    peer = shutil.which("mount.exfat-fuse") or shutil.which("exfat-fuse")
    if peer:
        rows.append(("exfat-fuse (C)", *bench("peer", peer, "rw", args, source, LoopFuseBackground)))
    else:
        print("note: exfat-fuse not installed, its column is skipped", file=sys.stderr)
    print_table(rows, f"seconds, min / median of {args.runs}; 256 MiB file on a 1 GiB exFAT image")
    ours = rows[0][1]
    for name, res, _ in rows[1:]:
        print(f"speed-up vs {name}: " + speedups(ours, res, 1))
    print(f"our warm sequential read: {256 / statistics.median(ours['read_warm']) / 1024:.2f} GiB/s")


if __name__ == "__main__":
    main()
