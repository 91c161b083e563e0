#!/usr/bin/env python3
"""Real-workload benchmark for any filesystem: a real source tree (/usr/include, about
8,000 files in 830 directories, 130 MiB) untarred, walked, listed, read back and removed,
plus one 256 MiB sequential file; peak RSS of each daemon (VmHWM). One run.

Figures, on a fresh 2 GiB image per row and run (rows interleaved: one run of each in turn):
  untar      tar -xf TAR (then sync), after drop_caches
  find_cold  find TREE | wc -l, after a remount and drop_caches
  lsR_warm   ls -lR TREE, the second one in the same mount (the first warms the caches)
  read_all   tar -cf - TREE | cat > /dev/null, after a remount and drop_caches
             (not `tar -cf /dev/null`: GNU tar sees /dev/null and reads no file data)
  write256   dd bs=1M conv=fsync of 256 MiB
  read256    dd bs=1M of it, after a remount and drop_caches
  rm_rf      rm -rf TREE (then sync), after a remount and drop_caches
The image is unmounted after every run and checked (fsck -n); the number of files found
after the untar is checked against the archive's (FAT and exFAT take no symlinks and fold
case, so some names of /usr/include cannot be made there; the count shows how many).

Rows are presets (--rows, comma-separated):
  ours-exfat   this project's fusefatfs -o rw+ on mkfs.exfat
  exfat-fuse   exfat-fuse (Debian) -o rw on a loop device over mkfs.exfat
  c-exfat      the C fusefatfs (--c PATH) -o rw+ on mkfs.exfat
  ours-fat32   this project's fusefatfs -o rw+ on mkfs.fat -F 32
  c-fat32      the C fusefatfs on mkfs.fat -F 32
  ours-ext4    this project's fuseext2 -o rw+ on mkfs.ext4
  fuse2fs      fuse2fs -o rw on mkfs.ext4
  kernel-ext4  kernel ext4 on a loop device
A step that takes longer than --timeout is killed and reported as '>T'; the tree figures
after a timed-out untar are not measured (n/a). Needs root.

Usage: tree_bench.py [--rows R1,R2] [--runs N] [--once R3] [--timeout S] [--c PATH] [--dir DIR]
  make the archive once: tar -C /usr -cf /dev/shm/include.tar include
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

from benchlib import MIB, Daemon, LoopFuseBackground, drop_caches, sh, timed

KEYS = ["untar", "find_cold", "lsR_warm", "read_all", "write256", "read256", "rm_rf"]
INF = float("inf")


class LoopFuse(Daemon):
    """A FUSE daemon that wants a block device: a loop device over `image`."""

    def __init__(self, binary, image, mnt, options):
        self.loop = sh(f"losetup -f --show {image}").stdout.strip()
        try:
            super().__init__(binary, self.loop, mnt, options)
        except Exception:
            sh(f"losetup -d {self.loop}", check=False)
            raise

    def unmount(self):
        super().unmount()
        sh(f"losetup -d {self.loop}", check=False)


class Kernel:
    """A kernel loop mount, with the Daemon interface."""

    def __init__(self, binary, image, mnt, options):
        self.mnt = mnt
        sh(f"mount -o loop {image} {mnt}")

    def peak_rss_kib(self):
        return 0

    def unmount(self):
        sh(f"umount {self.mnt}")


MKFS = {
    "exfat": ("mkfs.exfat {img} >/dev/null", "fsck.exfat -n {img}"),
    "fat32": ("mkfs.fat -F 32 -n BENCH {img} >/dev/null", "fsck.fat -n {img}"),
    "ext4": ("mkfs.ext4 -q -F {img}", "e2fsck -fn {img}"),
}


def presets(args):
    repo = args.repo
    fat = args.ours_fat or os.path.join(repo, "target/release/fusefatfs")
    ext = args.ours_ext or os.path.join(repo, "target/release/fuseext2")
    return {
        "ours-exfat": ("fusefatfs exFAT (this project)", "exfat", fat, "rw+", Daemon),
        "exfat-fuse": ("exfat-fuse 1.3 (C)", "exfat", shutil.which("mount.exfat-fuse"), "rw", LoopFuseBackground),
        "c-exfat": ("fusefatfs 0.4 (C) exFAT", "exfat", args.c_binary, "rw+", Daemon),
        "ours-fat32": ("fusefatfs FAT32 (this project)", "fat32", fat, "rw+", Daemon),
        "c-fat32": ("fusefatfs 0.4 (C) FAT32", "fat32", args.c_binary, "rw+", Daemon),
        "ours-ext4": ("fuseext2 (this project)", "ext4", ext, "rw+", Daemon),
        "fuse2fs": ("fuse2fs", "ext4", shutil.which("fuse2fs"), "rw", Daemon),
        "kernel-ext4": ("kernel ext4 (loop)", "ext4", None, "", Kernel),
    }


def step(results, key, cmd, timeout, log):
    """Times `cmd` into results[key]; INF on timeout or failure (reason in `log`)."""
    try:
        results[key].append(timed(lambda: sh(cmd, timeout=timeout)))
        return True
    except subprocess.TimeoutExpired:
        results[key].append(INF)
        log.append(f"{key}: timed out after {timeout:.0f} s")
    except subprocess.CalledProcessError as e:
        results[key].append(INF)
        log.append(f"{key}: failed ({e.returncode}): {e.stderr.strip()[-300:]}")
    return False


def one_run(row, args, results, log):
    """One run of every figure on a fresh image. Returns the peak RSS (KiB) seen."""
    _, fs, binary, options, kind = row
    key = args.current
    image = os.path.join(args.dir, f"{key}.img")
    mnt = os.path.join(args.dir, f"mnt-{key}")
    os.makedirs(mnt, exist_ok=True)
    if os.path.exists(image):
        os.unlink(image)
    mkfs, fsck = MKFS[fs]
    sh(f"truncate -s 2G {image} && " + mkfs.format(img=image))
    mount = lambda: kind(binary, image, mnt, options)
    tree = f"{mnt}/include"
    t = args.timeout
    rss = 0

    def done(d):
        nonlocal rss
        rss = max(rss, d.peak_rss_kib())
        d.unmount()

    d = mount()
    drop_caches()
    # tar exits 2 when some members cannot be made (symlinks on FAT): still a full pass;
    # a timeout is what stops the tree figures.
    try:
        results["untar"].append(timed(lambda: sh(f"tar --no-same-owner -xf {args.tar} -C {mnt} 2>{args.dir}/{key}.tar.err; sync", timeout=t)))
        untar_ok = True
    except subprocess.TimeoutExpired:
        results["untar"].append(INF)
        log.append(f"untar: timed out after {t:.0f} s")
        untar_ok = False
    errors = sh(f"grep -c . {args.dir}/{key}.tar.err", check=False).stdout.strip() or "0"
    done(d)
    if untar_ok:
        d = mount()
        drop_caches()
        out = []
        try:
            results["find_cold"].append(timed(lambda: out.append(sh(f"find {tree}", timeout=t).stdout.count("\n"))))
        except subprocess.TimeoutExpired:
            results["find_cold"].append(INF)
            log.append(f"find_cold: timed out after {t:.0f} s")
        if out:
            log.append(f"untar: {out[0]} names found of {args.tar_names} in the archive, tar printed {errors} error lines")
        sh(f"ls -lR {tree} > /dev/null", timeout=t, check=False)
        step(results, "lsR_warm", f"ls -lR {tree} > /dev/null", t, log)
        done(d)
        d = mount()
        drop_caches()
        step(results, "read_all", f"tar -cf - -C {mnt} include | cat > /dev/null", t, log)
        done(d)
    d = mount()
    drop_caches()
    step(results, "write256", f"dd if={args.source} of={mnt}/big.bin bs=1M conv=fsync status=none", t, log)
    done(d)
    d = mount()
    drop_caches()
    step(results, "read256", f"dd if={mnt}/big.bin of=/dev/null bs=1M status=none", t, log)
    if untar_ok:
        done(d)
        d = mount()
        drop_caches()
        step(results, "rm_rf", f"rm -rf {tree}; sync", t, log)
        left = sh(f"ls -A {mnt}", check=False).stdout.split()
        if left != ["big.bin"]:
            log.append(f"rm_rf: left {left[:5]}")
    done(d)
    r = sh(fsck.format(img=image), check=False)
    if r.returncode != 0:
        log.append(f"FSCK FAILED ({r.returncode}): {(r.stdout + r.stderr).strip()[-400:]}")
    else:
        log.append("fsck -n: clean")
    return rss


def fmt(values, timeout):
    if not values:
        return "n/a"
    if any(v == INF for v in values):
        ok = [v for v in values if v != INF]
        return f">{timeout:.0f}" + (f" ({len(ok)} ok: {statistics.median(ok):.3f})" if ok else "")
    return f"{min(values):.3f} / {statistics.median(values):.3f}"


def median(values):
    return statistics.median(values) if values else None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="ours-exfat,exfat-fuse,c-exfat,ours-fat32")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--once", default="", help="rows (comma-separated) run in the first run only (slow peers)")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--c", dest="c_binary", default=None, help="the C fusefatfs binary")
    p.add_argument("--ours-fat", default=None)
    p.add_argument("--ours-ext", default=None)
    p.add_argument("--tar", default="/dev/shm/include.tar")
    p.add_argument("--dir", default=os.path.join(repo, "target/tree-bench"))
    args = p.parse_args()
    args.repo = repo
    os.makedirs(args.dir, exist_ok=True)
    if not os.path.exists(args.tar):
        sh(f"tar -C /usr -cf {args.tar} include")
    args.tar_names = sh(f"tar -tf {args.tar}").stdout.count("\n")
    args.source = "/dev/shm/fat-bench-src.bin"
    if not os.path.exists(args.source):
        sh(f"head -c {256 * MIB} /dev/urandom > {args.source}")

    table = presets(args)
    plan = []
    for name in args.rows.split(","):
        row = table[name]
        if not row[2] and row[4] is not Kernel:
            print(f"note: {name}: no binary (--c?), row skipped", file=sys.stderr)
            continue
        plan.append((name, row))
    merged = {name: ({k: [] for k in KEYS}, 0, []) for name, _ in plan}
    for run in range(args.runs):
        for name, row in plan:
            if run > 0 and name in args.once.split(","):
                continue
            args.current = name
            res, rss, log = merged[name]
            run_log = []
            rss = max(rss, one_run(row, args, res, run_log))
            for line in run_log:
                print(f"[{name} run {run + 1}] {line}", file=sys.stderr, flush=True)
            merged[name] = (res, rss, log + run_log)

    once = f" ({args.once}: 1)" if args.once else ""
    print(f"\nseconds, min / median of {args.runs}{once}; {args.tar_names} names from {args.tar}; 2 GiB images\n")
    print("| | " + " | ".join(KEYS) + " | peak RSS |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, row in plan:
        res, rss, _ = merged[name]
        rss_text = f"{rss / 1024:.1f} MiB" if rss else "n/a"
        print(f"| {row[0]} | " + " | ".join(fmt(res[k], args.timeout) for k in KEYS) + f" | {rss_text} |")
    base_name = plan[0][0]
    base = merged[base_name][0]
    print(f"\ntime of each row / time of {plan[0][1][0]} (medians; >1: the first row is faster)\n")
    print("| | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, row in plan[1:]:
        res = merged[name][0]
        cells = []
        for k in KEYS:
            a, b = median(base[k]), median(res[k])
            if a is None or b is None:
                cells.append("n/a")
            elif b == INF:
                cells.append(f">{args.timeout / a:.1f}" if a != INF else "n/a")
            elif a == INF:
                cells.append("n/a")
            else:
                cells.append(f"{b / a:.2f}")
        print(f"| {row[0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
