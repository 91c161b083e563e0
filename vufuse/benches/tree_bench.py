#!/usr/bin/env python3
"""Real-workload benchmark for any filesystem: a real source tree (/usr/include, about
8,000 files in 830 directories, 130 MiB) untarred, walked, listed, read back and removed,
plus one 256 MiB sequential file; peak RSS of each daemon (VmHWM). One run.

Figures, on a fresh 2 GiB image per row and run (rows interleaved: one run of each in turn,
the row that goes first rotating from run to run):
  untar      tar -xf TAR (then sync -f: syncfs of the mount), after drop_caches
  find_cold  find TREE | wc -l, after a remount and drop_caches
  lsR_warm   ls -lR TREE, the second one in the same mount (the first warms the caches)
  read_all   tar -cf - TREE | cat > /dev/null, after a remount and drop_caches
             (not `tar -cf /dev/null`: GNU tar sees /dev/null and reads no file data)
  write256   dd bs=1M conv=fsync of 256 MiB
  read256    dd bs=1M of it, after a remount and drop_caches
  rand4k     fio: 8,192 4 KiB reads and writes (70% reads) at random offsets of that file,
             one at a time (psync), then fsync; after a remount and drop_caches (skipped
             without fio)
  rm_rf      rm -rf TREE (then sync -f), after a remount and drop_caches
(--dir on a tmpfs, e.g. /dev/shm/tree-bench, keeps the host disk and other users of it
out of the figures: then every "disk" is RAM and the figures are the filesystems' own cost)
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
Directory rows (the same figures on a directory tree of the host disk; no image, no fsck;
"cold" = remount and drop_caches; the lower tree of the union rows is empty):
  host-dir     a plain directory (no mount): the counterpart of the bind rows
  vufs-bind    this project's vufs -o bind SOURCE MNT
  bindfs       bindfs SOURCE MNT
  overlay      kernel overlayfs (lowerdir, upperdir, workdir): the counterpart of the cow rows
  vufs-cow     this project's vufs -o cow SOURCE MNT (MNT is the lower tree)
  fuse-overlayfs  fuse-overlayfs -o lowerdir=,upperdir=,workdir=
  vufs-bind+always, vufs-cow+always  the vufs rows with -o cache=always (only safe when no one
               changes the layers behind the mount, as fuse-overlayfs assumes by default)
Every row has a counterpart (the kernel's way of doing the same: kernel-ext4 for the ext4
rows, overlay for the union rows, host-dir for the bind rows); --json FILE writes all
figures, medians and ratios. A row whose program is missing is skipped with the reason.
--svg FILE draws those ratios (ratio_plot.py). The release binaries of this project are
built first (cargo build --release) unless --no-build. A step that takes longer than
--timeout is killed and reported as '>T'; the tree figures after a timed-out untar are not
measured (n/a). Needs root.

Usage: tree_bench.py [--rows R1,R2] [--runs N] [--once R3] [--timeout S] [--c PATH] [--dir DIR]
                     [--json FILE] [--svg FILE] [--no-build] [--ours-vufs PATH] [--vufs-opts O] [--ext-opts O] [--requests]
                     [--base-ext PATH] [--base-vufs PATH]
  make the archive once: tar -C /usr -cf /dev/shm/include.tar include
"""

import argparse
import json
import time
import os
import shutil
import statistics
import subprocess
import sys

import ratio_plot

from benchlib import MIB, Daemon, LoopFuseBackground, drop_caches, sh, timed

KEYS = ["untar", "find_cold", "lsR_warm", "read_all", "write256", "read256", "rand4k", "rm_rf"]
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


# --requests: the log file our daemons (-d) write their requests to, while a row runs.
REQUEST_LOG = {"path": None}


def count_requests():
    """Requests logged so far by the current row's daemons (0 without --requests), but
    FORGET."""
    path = REQUEST_LOG["path"]
    if not path or not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        # FORGET has no reply (nobody waits for it) and comes in batches: not counted.
        # One line per request (vufuse's trace: `opcode(node, ...) -> result ...`).
        return sum(1 for line in f if b" -> " in line and line[:1].isalpha()
                   and not line.startswith(b"forget("))


class LoggedDaemon(Daemon):
    """This project's daemon with -d, its requests appended to REQUEST_LOG (--requests)."""

    def __init__(self, binary, image, mnt, options):
        self.mnt = mnt
        self.proc = subprocess.Popen([binary, "-d", "-o", options, image, mnt], stderr=open(REQUEST_LOG["path"], "ab"))
        deadline = time.time() + 10
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{binary} did not mount (see {REQUEST_LOG['path']})")
            time.sleep(0.01)


class FgDaemon:
    """A FUSE daemon run in the foreground with a full command line (`argv`), on `mnt`
    (with -d and its requests logged when `logged`, see --requests)."""

    def __init__(self, argv, mnt, logged=False):
        self.mnt = mnt
        if logged and REQUEST_LOG["path"]:
            argv = [argv[0], "-d"] + argv[1:]
            self.proc = subprocess.Popen(argv, stderr=open(REQUEST_LOG["path"], "ab"))
        else:
            self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{argv[0]} did not mount: {self.proc.stderr.read().decode() if self.proc.stderr else REQUEST_LOG['path']}")
            time.sleep(0.01)

    peak_rss_kib = Daemon.peak_rss_kib
    unmount = Daemon.unmount


class NoMount:
    """The host directory itself: nothing to mount (a remount is only a drop_caches)."""

    def peak_rss_kib(self):
        return 0

    def unmount(self):
        pass


class KernelMount:
    """A kernel mount(8) command line, with the Daemon interface."""

    def __init__(self, cmd, mnt):
        self.mnt = mnt
        sh(cmd)

    def peak_rss_kib(self):
        return 0

    def unmount(self):
        sh(f"umount {self.mnt}")


# The vufs options of a row named vufs-MODE+EXTRA.
VUFS_EXTRA = {"always": "cache=always"}


def dir_mounter(kind, args, base, vufs, extra=""):
    """For a directory row: (function that mounts and returns the handle, the view's path)."""
    src, lower, work, mnt = (os.path.join(base, d) for d in ("src", "lower", "work", "mnt"))
    for d in (src, lower, work, mnt):
        os.makedirs(d, exist_ok=True)
    if kind == "host-dir":
        return (lambda: NoMount()), src
    if kind == "vufs-bind":
        return (lambda: FgDaemon([vufs, "-f", "-o", ",".join(filter(None, ["bind", extra, args.vufs_opts])), src, mnt], mnt, True)), mnt
    if kind == "bindfs":
        return (lambda: FgDaemon([shutil.which("bindfs"), "-f", src, mnt], mnt)), mnt
    if kind == "vufs-cow":
        # MNT is the lower tree: the view appears on it.
        return (lambda: FgDaemon([vufs, "-f", "-o", ",".join(filter(None, ["cow", extra, args.vufs_opts])), src, lower], lower, True)), lower
    if kind == "overlay":
        return (lambda: KernelMount(f"mount -t overlay overlay -o lowerdir={lower},upperdir={src},workdir={work} {mnt}", mnt)), mnt
    if kind == "fuse-overlayfs":
        return (lambda: FgDaemon([shutil.which("fuse-overlayfs"), "-f", "-o", f"lowerdir={lower},upperdir={src},workdir={work}", mnt], mnt)), mnt
    raise ValueError(kind)


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
        "host-dir": ("host directory (no mount)", "dir", "host-dir", "", None),
        "vufs-bind": ("vufs bind (this project)", "dir", args.ours_vufs, "", None),
        "bindfs": ("bindfs 1.14 (C)", "dir", shutil.which("bindfs"), "", None),
        "overlay": ("kernel overlayfs", "dir", "overlay", "", None),
        "vufs-cow": ("vufs cow (this project)", "dir", args.ours_vufs, "", None),
        "fuse-overlayfs": ("fuse-overlayfs (C)", "dir", shutil.which("fuse-overlayfs"), "", None),
        # The same rows with other builds of this project (--base-ext, --base-vufs): before/after.
        "ours-ext4@base": ("fuseext2 (base build)", "ext4", args.base_ext, "rw+", Daemon),
        "ours-ext4+wb": ("fuseext2 -o writeback_cache", "ext4", ext, "rw+,writeback_cache", Daemon),
        "vufs-bind+always": ("vufs bind -o cache=always", "dir", args.ours_vufs, "", None),
        "vufs-cow+always": ("vufs cow -o cache=always", "dir", args.ours_vufs, "", None),
        "vufs-bind@base": ("vufs bind (base build)", "dir", args.base_vufs, "", None),
        "vufs-cow@base": ("vufs cow (base build)", "dir", args.base_vufs, "", None),
    }


# The kernel's way of doing what each row does: its ratio's denominator.
COUNTERPART = {
    "ours-ext4": "kernel-ext4",
    "fuse2fs": "kernel-ext4",
    "kernel-ext4": "kernel-ext4",
    "vufs-bind": "host-dir",
    "bindfs": "host-dir",
    "host-dir": "host-dir",
    "vufs-cow": "overlay",
    "fuse-overlayfs": "overlay",
    "overlay": "overlay",
    "ours-ext4@base": "kernel-ext4",
    "ours-ext4+wb": "kernel-ext4",
    "vufs-bind@base": "host-dir",
    "vufs-cow@base": "overlay",
    "vufs-bind+always": "host-dir",
    "vufs-cow+always": "overlay",
    # exFAT has no kernel driver here: the peers are timed against ours (issue #13's
    # "3x faster" reads off directly), ours against FAT32 ("untar within 1.5x").
    "exfat-fuse": "ours-exfat",
    "c-exfat": "ours-exfat",
    "ours-exfat": "ours-fat32",
}
# The C program each of ours must not be slower than.
ANCHOR = {"ours-ext4": "fuse2fs", "vufs-bind": "bindfs", "vufs-cow": "fuse-overlayfs",
          "ours-ext4@base": "fuse2fs", "ours-ext4+wb": "fuse2fs", "vufs-bind@base": "bindfs", "vufs-cow@base": "fuse-overlayfs",
          "vufs-bind+always": "bindfs", "vufs-cow+always": "fuse-overlayfs"}


def settled_requests():
    """The request count once the asynchronous ones (release, forget) have come in."""
    if not REQUEST_LOG["path"]:
        return 0
    n = count_requests()
    while True:
        time.sleep(0.2)
        m = count_requests()
        if m == n:
            return n
        n = m


def step(results, key, cmd, timeout, log):
    """Times `cmd` into results[key]; INF on timeout or failure (reason in `log`). With
    --requests, also the requests our daemon got for it, into results["requests"][key]."""
    try:
        before = settled_requests()
        results[key].append(timed(lambda: sh(cmd, timeout=timeout)))
        if REQUEST_LOG["path"]:
            results["requests"].setdefault(key, []).append(settled_requests() - before)
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
    ours = key.startswith("ours-") or key.startswith("vufs-")
    REQUEST_LOG["path"] = os.path.join(args.dir, f"{key}.requests.log") if args.requests and ours else None
    if REQUEST_LOG["path"] and os.path.exists(REQUEST_LOG["path"]):
        os.unlink(REQUEST_LOG["path"])
    if REQUEST_LOG["path"] and kind is Daemon:
        kind = LoggedDaemon
    if fs == "dir":
        base = os.path.join(args.dir, f"dir-{key}")
        for d in ("mnt", "lower"):
            sh(f"umount -l {base}/{d} 2>/dev/null", check=False)
        sh(f"rm -rf {base}")
        kind_name, _, extra = key.split("@")[0].partition("+")
        mount, mnt = dir_mounter(kind_name, args, base, binary, VUFS_EXTRA.get(extra, ""))
        fsck = None
        image = None
    else:
        image = os.path.join(args.dir, f"{key}.img")
        mnt = os.path.join(args.dir, f"mnt-{key}")
        os.makedirs(mnt, exist_ok=True)
        if os.path.exists(image):
            os.unlink(image)
        mkfs, fsck = MKFS[fs]
        sh(f"truncate -s 2G {image} && " + mkfs.format(img=image))
        mount = lambda: kind(binary, image, mnt, options + ("," + args.ext_opts if args.ext_opts and key == "ours-ext4" else ""))
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
        before = settled_requests()
        results["untar"].append(timed(lambda: sh(f"tar --no-same-owner -xf {args.tar} -C {mnt} 2>{args.dir}/{key}.tar.err; sync -f {mnt}", timeout=t)))
        if REQUEST_LOG["path"]:
            results["requests"].setdefault("untar", []).append(settled_requests() - before)
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
            before = settled_requests()
            results["find_cold"].append(timed(lambda: out.append(sh(f"find {tree}", timeout=t).stdout.count("\n"))))
            if REQUEST_LOG["path"]:
                results["requests"].setdefault("find_cold", []).append(settled_requests() - before)
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
    if shutil.which("fio"):
        done(d)
        d = mount()
        drop_caches()
        step(results, "rand4k", RAND4K.format(file=f"{mnt}/big.bin"), t, log)
    if untar_ok:
        done(d)
        d = mount()
        drop_caches()
        step(results, "rm_rf", f"rm -rf {tree}; sync -f {mnt}", t, log)
        left = [n for n in sh(f"ls -A {mnt}", check=False).stdout.split() if n != "lost+found"]
        if left != ["big.bin"]:
            log.append(f"rm_rf: left {left[:5]}")
    done(d)
    if fsck is None:
        return rss
    r = sh(fsck.format(img=image), check=False)
    if r.returncode != 0:
        log.append(f"FSCK FAILED ({r.returncode}): {(r.stdout + r.stderr).strip()[-400:]}")
    else:
        log.append("fsck -n: clean")
    return rss


# A fixed amount of random 4 KiB I/O (seeded: the same offsets every run), so the figure is
# a time like the others; --end_fsync makes the writes count.
RAND4K = ("fio --name=rand4k --filename={file} --size=256M --rw=randrw --rwmixread=70 --bs=4k "
          "--io_size=32M --ioengine=psync --randrepeat=1 --randseed=1 --norandommap "
          "--end_fsync=1 --output=/dev/null")


def build(repo):
    """The release binaries the rows of this project use."""
    sh(f"cd {repo} && cargo build --release --quiet -p vufuse -p vufs-fuse --bins", timeout=3600)


def fmt(values, timeout):
    if not values:
        return "n/a"
    if any(v == INF for v in values):
        ok = [v for v in values if v != INF]
        return f">{timeout:.0f}" + (f" ({len(ok)} ok: {statistics.median(ok):.3f})" if ok else "")
    return f"{min(values):.3f} / {statistics.median(values):.3f}"


def median(values):
    return statistics.median(values) if values else None


def ratio_cell(a, b, timeout):
    """Time b / time a of two medians, as text."""
    if a is None or b is None:
        return "n/a", None
    if b == INF:
        return (f">{timeout / a:.1f}" if a != INF else "n/a"), None
    if a == INF or a == 0:
        return "n/a", None
    return f"{b / a:.2f}", b / a


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="ours-exfat,exfat-fuse,c-exfat,ours-fat32")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--once", default="", help="rows (comma-separated) run in the first run only (slow peers)")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--c", dest="c_binary", default=None, help="the C fusefatfs binary")
    p.add_argument("--ours-fat", default=os.path.join(target, "release/fusefatfs"))
    p.add_argument("--ours-ext", default=os.path.join(target, "release/fuseext2"))
    p.add_argument("--ours-vufs", default=os.path.join(target, "release/vufs"))
    p.add_argument("--base-ext", default=None, help="another fuseext2 build, for the ours-ext4@base row")
    p.add_argument("--base-vufs", default=None, help="another vufs build, for the vufs-*@base rows")
    p.add_argument("--vufs-opts", default="", help="extra -o options for the vufs rows")
    p.add_argument("--ext-opts", default="", help="extra -o options for ours-ext4")
    p.add_argument("--tar", default="/dev/shm/include.tar")
    p.add_argument("--dir", default=os.path.join(target, "tree-bench"))
    p.add_argument("--json", default=None, help="write every figure, median and ratio here")
    p.add_argument("--svg", default=None, help="draw the ratios to counterparts here (SVG)")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument("--requests", action="store_true",
                   help="run this project's daemons with -d and count the FUSE requests of each figure "
                        "(deterministic, unlike the times; the times of such a run are slowed by the log)")
    args = p.parse_args()
    args.repo = repo
    if not args.no_build:
        build(repo)
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
        binary, kind = row[2], row[4]
        if kind is not Kernel and (not binary or (os.sep in binary and not os.path.exists(binary))):
            print(f"note: {name}: no binary ({binary or 'not installed'}), row skipped", file=sys.stderr)
            continue
        if name == "overlay" and "overlay" not in open("/proc/filesystems").read():
            print("note: overlay: this kernel has no overlayfs, row skipped", file=sys.stderr)
            continue
        plan.append((name, row))
    merged = {name: (dict({k: [] for k in KEYS}, requests={}), 0, []) for name, _ in plan}
    loads = []
    for run in range(args.runs):
        # The rows take turns going first (run 2 starts with the second row...): on this
        # kind of machine whatever runs first after a change of workload is slower.
        turn = run % len(plan) if plan else 0
        for name, row in plan[turn:] + plan[:turn]:
            if run > 0 and name in args.once.split(","):
                continue
            args.current = name
            res, rss, log = merged[name]
            run_log = []
            loads.append(os.getloadavg()[0])
            rss = max(rss, one_run(row, args, res, run_log))
            for line in run_log:
                print(f"[{name} run {run + 1}] {line}", file=sys.stderr, flush=True)
            merged[name] = (res, rss, log + run_log)

    once = f" ({args.once}: 1)" if args.once else ""
    load_text = f"load average (1 min) at row starts: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}" if loads else ""
    print(f"\nseconds, min / median of {args.runs}{once}; {args.tar_names} names from {args.tar}; 2 GiB images; {load_text}\n")
    print("| | " + " | ".join(KEYS) + " | peak RSS |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, row in plan:
        res, rss, _ = merged[name]
        rss_text = f"{rss / 1024:.1f} MiB" if rss else "n/a"
        print(f"| {row[0]} | " + " | ".join(fmt(res[k], args.timeout) for k in KEYS) + f" | {rss_text} |")
    out = {"runs": args.runs, "tar_names": args.tar_names, "loads": loads, "rows": {}}
    print("\ntime of each row / time of its kernel counterpart (medians; 2.00 = twice as slow); "
          "'C' after a figure: slower than the C program doing the same\n")
    print("| | vs | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, row in plan:
        res, rss, log = merged[name]
        entry = {"label": row[0], "seconds": res, "median": {k: median(res[k]) for k in KEYS},
                 "peak_rss_kib": rss, "log": log, "vs": None, "ratio": {}}
        out["rows"][name] = entry
        cp = COUNTERPART.get(name)
        if cp is None or cp == name or cp not in merged:
            continue
        entry["vs"] = cp
        anchor = merged.get(ANCHOR.get(name, ""), (None,))[0]
        cells = []
        for k in KEYS:
            text, value = ratio_cell(median(merged[cp][0][k]), median(res[k]), args.timeout)
            entry["ratio"][k] = value
            if anchor is not None and median(res[k]) is not None and median(anchor[k]) is not None and median(res[k]) > median(anchor[k]):
                text += " C"
            cells.append(text)
        print(f"| {row[0]} | {cp} | " + " | ".join(cells) + " |")
    if args.requests:
        print("\nFUSE requests per figure but FORGET (this project's daemons, -d log; median of the runs)\n")
        print("| | " + " | ".join(KEYS) + " |")
        print("|---" * (len(KEYS) + 1) + "|")
        for name, row in plan:
            req = merged[name][0]["requests"]
            if req:
                print(f"| {row[0]} | " + " | ".join(f"{statistics.median(req[k]):.0f}" if k in req else "n/a" for k in KEYS) + " |")
    if args.svg:
        plotted = [(e["label"] + " / " + e["vs"], e["ratio"]) for e in out["rows"].values() if e["vs"]]
        ratio_plot.write_svg(args.svg, KEYS, plotted, f"time / counterpart, medians of {args.runs} runs")
        print(f"\nSVG: {args.svg}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=lambda v: None)
        print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
