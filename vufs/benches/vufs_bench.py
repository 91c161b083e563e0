#!/usr/bin/env python3
"""vufs benchmark: vufs bind vs bindfs, vufs cow vs fuse-overlayfs and
unionfs-fuse -o cow, each also vs the plain directory, in one run.

Figures (wall clock, min / median of 3; page cache dropped before each):
  cp -a   of a 10,000-file tree (100 dirs x 100 files, 1-4 KiB) into the view
  find    `find -printf` with stat fields over that tree in the view
  read    256 MiB sequential read (dd bs=1M) of a file in the view (for the
          union filesystems the file lives in the lower tree)
and the daemon's peak RSS (VmHWM of the -f process).

Installs nothing: a competitor that is not installed is skipped with a note.
Run as root (drop_caches, mounts). Usage:
  cargo build --release -p vufs-fuse && vufs/benches/vufs_bench.py [--vufs PATH] [--dir DIR]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = 3
FILES_DIRS = 100
FILES_PER_DIR = 100
BIG_MIB = 256


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, **kw)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        print(f"note: cannot drop caches ({e}); figures are warm", file=sys.stderr)


def timed(cmd):
    drop_caches()
    t = time.perf_counter()
    sh(cmd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def make_tree(root):
    import random
    rnd = random.Random(42)
    for d in range(FILES_DIRS):
        dd = os.path.join(root, f"d{d:03}")
        os.makedirs(dd)
        for i in range(FILES_PER_DIR):
            with open(os.path.join(dd, f"f{i:03}.txt"), "wb") as f:
                f.write(rnd.randbytes(rnd.randint(1024, 4096)))


def is_mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def wait_mounted(path, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        if is_mounted(path):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.01)
    raise RuntimeError(f"{path} not mounted in time")


def vmhwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])  # KiB
    except OSError:
        pass
    return None


class Config:
    def __init__(self, name, kind, argv):
        self.name = name      # label
        self.kind = kind      # "plain", "single" (one source dir), "union" (upper over lower)
        self.argv = argv      # function(upper, lower, work, mnt) -> argv, or None for plain


def configs(vufs):
    out = [Config("plain dir", "plain", None)]
    out.append(Config("vufs bind", "single", lambda u, l, w, m: [vufs, "-f", u, m]))
    if shutil.which("bindfs"):
        out.append(Config("bindfs", "single", lambda u, l, w, m: ["bindfs", "-f", u, m]))
    else:
        print("note: bindfs not installed: column skipped", file=sys.stderr)
    out.append(Config("vufs cow", "union", lambda u, l, w, m: [vufs, "-f", "-o", "cow", u, m]))
    if shutil.which("fuse-overlayfs"):
        out.append(Config("fuse-overlayfs", "union", lambda u, l, w, m: [
            "fuse-overlayfs", "-f", "-o", f"lowerdir={l},upperdir={u},workdir={w}", m]))
    else:
        print("note: fuse-overlayfs not installed: column skipped", file=sys.stderr)
    if shutil.which("unionfs-fuse"):
        out.append(Config("unionfs-fuse cow", "union", lambda u, l, w, m: [
            "unionfs-fuse", "-f", "-o", "cow", f"{u}=RW:{l}=RO", m]))
    else:
        print("note: unionfs-fuse not installed: column skipped", file=sys.stderr)
    return out


def one_run(cfg, base, tree, big):
    """Returns dict figure -> seconds, and peak RSS in KiB (or None)."""
    work = tempfile.mkdtemp(dir=base)
    upper, lower, wdir, mnt = (os.path.join(work, n) for n in ("upper", "lower", "work", "mnt"))
    for d in (upper, lower, wdir, mnt):
        os.makedirs(d)
    # The big file: in the lower tree for union filesystems, in the source otherwise.
    home = {"plain": mnt, "single": upper, "union": lower}[cfg.kind]
    os.link(big, os.path.join(home, "big")) if os.stat(big).st_dev == os.stat(home).st_dev \
        else shutil.copyfile(big, os.path.join(home, "big"))
    if cfg.kind == "union":
        # the lower mount point is the lower tree for vufs; the others get it by option
        pass
    proc = None
    target = mnt
    if cfg.argv:
        if cfg.name.startswith("vufs cow"):
            # vufs: the mount point is the lower tree.
            os.rmdir(mnt)
            os.rename(lower, mnt)
            lower = mnt
        argv = cfg.argv(upper, lower, wdir, mnt)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_mounted(mnt, proc)
    res = {}
    try:
        res["cp -a 10k files"] = timed(f"cp -a '{tree}' '{target}/tree'")
        res["find + stat"] = timed(f"find '{target}/tree' -printf '%i %s %m %U %T@\\n'")
        res["read 256 MiB"] = timed(f"dd if='{target}/big' of=/dev/null bs=1M status=none")
        rss = vmhwm(proc.pid) if proc else None
    finally:
        if proc:
            subprocess.run(["fusermount3", "-u", "-z", mnt])
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    shutil.rmtree(work, ignore_errors=True)
    return res, rss


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    default_vufs = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "../../target")),
                                "release/vufs")
    ap.add_argument("--vufs", default=default_vufs)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a tempdir in /var/tmp)")
    args = ap.parse_args()
    if not os.access(args.vufs, os.X_OK):
        sys.exit(f"vufs binary not found at {args.vufs}: cargo build --release -p vufs-fuse")
    base = tempfile.mkdtemp(prefix="vufs-bench-", dir=args.dir or "/var/tmp")
    try:
        tree = os.path.join(base, "tree")
        make_tree(tree)
        big = os.path.join(base, "big")
        sh(f"dd if=/dev/urandom of='{big}' bs=1M count={BIG_MIB} status=none")
        results = {}
        for cfg in configs(args.vufs):
            runs, rss = [], []
            for _ in range(RUNS):
                r, m = one_run(cfg, base, tree, big)
                runs.append(r)
                if m:
                    rss.append(m)
            results[cfg.name] = (runs, max(rss) if rss else None)
            print(f"done: {cfg.name}", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    figures = ["cp -a 10k files", "find + stat", "read 256 MiB"]
    print(f"\n| config | " + " | ".join(f"{f} (s, min / median)" for f in figures) + " | peak RSS |")
    print("|---" * (len(figures) + 2) + "|")
    med = {}
    for name, (runs, rss) in results.items():
        cells = []
        for f in figures:
            xs = [r[f] for r in runs]
            med[(name, f)] = statistics.median(xs)
            cells.append(f"{min(xs):.3f} / {statistics.median(xs):.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {'-' if rss is None else f'{rss / 1024:.1f} MiB'} |")
    pairs = [("vufs bind", "bindfs"), ("vufs bind", "plain dir"), ("bindfs", "plain dir"),
             ("vufs cow", "fuse-overlayfs"), ("vufs cow", "unionfs-fuse cow"), ("vufs cow", "plain dir"),
             ("fuse-overlayfs", "plain dir"), ("unionfs-fuse cow", "plain dir")]
    print("\nRatios of medians (< 1: the first is faster):\n")
    print("| ratio | " + " | ".join(figures) + " |")
    print("|---" * (len(figures) + 1) + "|")
    for a, b in pairs:
        if a in results and b in results:
            print(f"| {a} / {b} | " + " | ".join(f"{med[(a, f)] / med[(b, f)]:.2f}" for f in figures) + " |")


if __name__ == "__main__":
    main()
