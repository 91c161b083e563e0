#!/usr/bin/env python3
"""FAT benchmark: this project's fusefatfs vs the C fusefatfs vs mtools, one run.

Figures (ANCHORS.md B.1 method): sequential write of 256 MiB (dd bs=1M
conv=fsync), cold and warm sequential read, create+write 4 KiB+stat of 5,000
files named file_NNNNN.dat in one directory (then sync), and `ls -l` of them
cold. Each FUSE daemon runs in the foreground so its peak RSS (VmHWM) can be
read before unmount. Needs root (drop_caches, mount).

Usage: fat_bench.py [--ours PATH] [--c PATH] [--runs N] [--dir DIR]
  --c        the C fusefatfs binary (built by you, outside this repository);
             its column is skipped when not given
  --timeout  seconds before a slow step is abandoned and reported as such
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

from benchlib import MIB, Daemon, drop_caches, empty_results, measure_mounted, print_table, sh, speedups, timed


def fresh_image(path, size_mib):
    if os.path.exists(path):
        os.unlink(path)
    sh(f"truncate -s {size_mib}M {path} && mkfs.fat -F 32 -n BENCH {path}")


def bench_fuse(name, binary, options, args, source):
    image = os.path.join(args.dir, f"{name}.img")
    mnt = os.path.join(args.dir, f"mnt-{name}")
    os.makedirs(mnt, exist_ok=True)
    results = empty_results()
    rss = 0
    for _ in range(args.runs):
        fresh_image(image, 1024)
        rss = max(rss, measure_mounted(lambda: Daemon(binary, image, mnt, options), mnt, source, args.timeout, results))
        fsck = sh(f"fsck.fat -n {image}", check=False)
        if fsck.returncode != 0:
            print(f"WARNING: {name}: fsck.fat -n after the run: {fsck.stdout.strip()}", file=sys.stderr)
    return results, rss


def bench_mtools(args, source):
    image = os.path.join(args.dir, "mtools.img")
    results = empty_results()
    files = os.path.join(args.dir, "mtools-src")
    if not os.path.isdir(files):
        os.makedirs(files)
        for i in range(5000):
            with open(os.path.join(files, "file_%05d.dat" % i), "wb") as f:
                f.write(b"x" * 4096)
    for _ in range(args.runs):
        fresh_image(image, 1024)
        drop_caches()
        results["write"].append(timed(lambda: sh(f"mcopy -i {image} {source} ::/big.bin && sync")))
        drop_caches()
        results["read_cold"].append(timed(lambda: sh(f"mcopy -i {image} ::/big.bin - > /dev/null")))
        results["read_warm"].append(timed(lambda: sh(f"mcopy -i {image} ::/big.bin - > /dev/null")))
        sh(f"mmd -i {image} ::/many")
        try:
            results["create5000"].append(timed(lambda: sh(f"mcopy -i {image} {files}/* ::/many/ && sync", timeout=args.timeout)))
        except subprocess.TimeoutExpired:
            results["create5000"].append(float("inf"))
        if results["create5000"][-1] != float("inf"):
            drop_caches()
            results["ls_cold"].append(timed(lambda: sh(f"mdir -i {image} ::/many > /dev/null")))
    return results, 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default=os.path.join(repo, "target/release/fusefatfs"))
    p.add_argument("--c", dest="c_binary", default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--dir", default=os.path.join(repo, "target/fat-bench"))
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    source = "/dev/shm/fat-bench-src.bin"
    if not os.path.exists(source):
        sh(f"head -c {256 * MIB} /dev/urandom > {source}")

    rows = [("fusefatfs (this project)", *bench_fuse("ours", args.ours, "rw+", args, source))]
    if args.c_binary:
        rows.append(("fusefatfs (C, v0.4)", *bench_fuse("c", args.c_binary, "rw+", args, source)))
    else:
        print("note: --c not given, the C fusefatfs column is skipped", file=sys.stderr)
    if shutil.which("mcopy"):
        rows.append(("mtools (no mount)", *bench_mtools(args, source)))

    print_table(rows, f"seconds, min / median of {args.runs}; 256 MiB file on a 1 GiB FAT32 image")
    ours = rows[0][1]
    for name, res, _ in rows[1:]:
        print(f"speed-up vs {name}: " + speedups(ours, res, 1))
    mib_s = 256 / statistics.median(ours["read_warm"])
    print(f"our warm sequential read: {mib_s / 1024:.2f} GiB/s")


if __name__ == "__main__":
    main()
