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
import signal
import statistics
import subprocess
import sys
import time

MIB = 1 << 20


def sh(cmd, timeout=None, check=True):
    """Runs a shell command; on timeout kills its whole process group (a
    plain subprocess timeout kills only the shell and leaves mcopy running)."""
    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Daemon:
    """A FUSE daemon mounted in the foreground on `mnt`."""

    def __init__(self, binary, image, mnt, options):
        self.mnt = mnt
        self.proc = subprocess.Popen([binary, "-f", "-o", options, image, mnt], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{binary} did not mount: {self.proc.stderr.read().decode()}")
            time.sleep(0.01)

    def peak_rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def unmount(self):
        # Lazily if a killed step left something open.
        if sh(f"fusermount3 -u {self.mnt}", check=False).returncode != 0:
            sh(f"fusermount3 -u -z {self.mnt}")
        self.proc.wait(timeout=120)


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


CREATE_SCRIPT = r"""
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
block = b"x" * 4096
for i in range(5000):
    p = os.path.join(d, "file_%05d.dat" % i)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, block)
    os.close(fd)
    os.stat(p)
dfd = os.open(d, os.O_RDONLY)
os.fsync(dfd)
os.close(dfd)
os.sync()
"""


def bench_fuse(name, binary, options, args, source, kind=None):
    """One run of every figure on a fresh image; returns ({figure: [seconds]}, peak RSS KiB)."""
    kind = kind or Daemon
    image = os.path.join(args.dir, f"{name}.img")
    mnt = os.path.join(args.dir, f"mnt-{name}")
    os.makedirs(mnt, exist_ok=True)
    results = {"write": [], "read_cold": [], "read_warm": [], "create5000": [], "ls_cold": []}
    rss = 0
    fresh_image(image, 2048)
    d = kind(binary, image, mnt, options)
    drop_caches()
    results["write"].append(timed(lambda: sh(f"dd if={source} of={mnt}/big.bin bs=1M conv=fsync status=none")))
    rss = max(rss, d.peak_rss_kib())
    d.unmount()
    d = kind(binary, image, mnt, options)
    drop_caches()
    results["read_cold"].append(timed(lambda: sh(f"dd if={mnt}/big.bin of=/dev/null bs=1M status=none")))
    results["read_warm"].append(timed(lambda: sh(f"dd if={mnt}/big.bin of=/dev/null bs=1M status=none")))
    drop_caches()
    try:
        results["create5000"].append(
            timed(lambda: sh(f"{sys.executable} -c '{CREATE_SCRIPT}' {mnt}/many", timeout=args.timeout))
        )
    except subprocess.TimeoutExpired:
        results["create5000"].append(float("inf"))
    rss = max(rss, d.peak_rss_kib())
    d.unmount()
    if results["create5000"][-1] != float("inf"):
        d = kind(binary, image, mnt, options)
        drop_caches()
        results["ls_cold"].append(timed(lambda: sh(f"ls -l {mnt}/many > /dev/null")))
        rss = max(rss, d.peak_rss_kib())
        d.unmount()
    fsck = sh(f"e2fsck -fn {image}", check=False)
    if fsck.returncode != 0:
        print(f"WARNING: {name}: e2fsck -fn after the run: {fsck.stdout.strip()[-500:]}", file=sys.stderr)
    return results, rss


def fmt(values):
    if not values:
        return "n/a"
    if any(v == float("inf") for v in values):
        return "timeout"
    return f"{min(values):.3f} / {statistics.median(values):.3f}"


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

    keys = ["write", "read_cold", "read_warm", "create5000", "ls_cold"]
    print(f"\nseconds, min / median of {args.runs}; 256 MiB file on a 2 GiB ext4 image\n")
    print(f"| {'':26} | " + " | ".join(f"{k:>15}" for k in keys) + " | peak RSS |")
    print("|" + "---|" * (len(keys) + 2))
    for name, res, rss in rows:
        rss_text = f"{rss // 1024} MiB" if rss else "n/a"
        print(f"| {name:26} | " + " | ".join(f"{fmt(res[k]):>15}" for k in keys) + f" | {rss_text} |")
    for ours_name, ours, _ in rows[:ours_rows]:
        for name, res, _ in rows[ours_rows:]:
            ratios = []
            for k in keys:
                if ours[k] and res[k]:
                    a, b = statistics.median(ours[k]), statistics.median(res[k])
                    ratios.append(f"{k} x{b / a:.2f}" if b != float("inf") else f"{k} (theirs timed out)")
            print(f"{ours_name}: speed-up vs {name}: " + ", ".join(ratios))
    mib_s = 256 / statistics.median(rows[0][1]["read_warm"])
    print(f"our warm sequential read: {mib_s / 1024:.2f} GiB/s")


if __name__ == "__main__":
    main()
