"""What the FUSE filesystem benchmarks beside this file (fat_bench.py, ext_bench.py) share:
running shell steps with a timeout that kills the whole step, dropping the page cache,
timing, a FUSE daemon mounted in the foreground (so its peak RSS can be read before
unmount), the five figures measured on a mounted image, and the result table.
"""

import os
import signal
import statistics
import subprocess
import sys
import time

MIB = 1 << 20

# The figures, in table order.
KEYS = ["write", "read_cold", "read_warm", "create5000", "ls_cold"]


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


def empty_results():
    """{figure: []}, for the seconds of each run."""
    return {k: [] for k in KEYS}


def measure_mounted(mount, mnt, source, timeout, results):
    """One run of every figure on a fresh image: `mount()` mounts it on `mnt` (and is called
    again for each cold figure) and returns an object with peak_rss_kib() and unmount().
    Appends the seconds to `results` (inf when create5000 times out, and then no ls_cold);
    returns the peak RSS in KiB seen."""
    rss = 0
    d = mount()
    drop_caches()
    results["write"].append(timed(lambda: sh(f"dd if={source} of={mnt}/big.bin bs=1M conv=fsync status=none")))
    rss = max(rss, d.peak_rss_kib())
    d.unmount()
    d = mount()
    drop_caches()
    results["read_cold"].append(timed(lambda: sh(f"dd if={mnt}/big.bin of=/dev/null bs=1M status=none")))
    results["read_warm"].append(timed(lambda: sh(f"dd if={mnt}/big.bin of=/dev/null bs=1M status=none")))
    drop_caches()
    try:
        results["create5000"].append(
            timed(lambda: sh(f"{sys.executable} -c '{CREATE_SCRIPT}' {mnt}/many", timeout=timeout))
        )
    except subprocess.TimeoutExpired:
        results["create5000"].append(float("inf"))
    rss = max(rss, d.peak_rss_kib())
    d.unmount()
    if results["create5000"][-1] != float("inf"):
        d = mount()
        drop_caches()
        results["ls_cold"].append(timed(lambda: sh(f"ls -l {mnt}/many > /dev/null")))
        rss = max(rss, d.peak_rss_kib())
        d.unmount()
    return rss


def fmt(values):
    if not values:
        return "n/a"
    if any(v == float("inf") for v in values):
        return "timeout"
    return f"{min(values):.3f} / {statistics.median(values):.3f}"


def print_table(rows, caption):
    """Prints `caption` and a Markdown table of `rows` [(name, {figure: [seconds]}, peak RSS KiB)]."""
    print(f"\n{caption}\n")
    print(f"| {'':26} | " + " | ".join(f"{k:>15}" for k in KEYS) + " | peak RSS |")
    print("|" + "---|" * (len(KEYS) + 2))
    for name, res, rss in rows:
        rss_text = f"{rss // 1024} MiB" if rss else "n/a"
        print(f"| {name:26} | " + " | ".join(f"{fmt(res[k]):>15}" for k in KEYS) + f" | {rss_text} |")


def speedups(ours, theirs, digits):
    """`figure xN` for each figure both have (their median over ours), N with `digits` decimals."""
    ratios = []
    for k in KEYS:
        if ours[k] and theirs[k]:
            a, b = statistics.median(ours[k]), statistics.median(theirs[k])
            ratios.append(f"{k} x{b / a:.{digits}f}" if b != float("inf") else f"{k} (theirs timed out)")
    return ", ".join(ratios)


class LoopFuseBackground:
    """A FUSE daemon that wants a block device and has no foreground option (exfat-fuse:
    its -d also logs every request): a loop device over `image`, the daemon started in the
    background and found by its command line, so its peak RSS can still be read."""

    def __init__(self, binary, image, mnt, options):
        self.mnt = mnt
        self.loop = sh(f"losetup -f --show {image}").stdout.strip()
        try:
            sh(f"{binary} -o {options} {self.loop} {mnt}", timeout=30)
            deadline = time.time() + 10
            while not os.path.ismount(mnt):
                if time.time() > deadline:
                    raise RuntimeError(f"{binary} did not mount {self.loop}")
                time.sleep(0.01)
            pids = sh(f"pgrep -f '{binary} .*{self.loop} {mnt}$'", check=False).stdout.split()
            if len(pids) != 1:
                raise RuntimeError(f"{binary}: expected one daemon for {self.loop}, found {pids}")
            self.pid = int(pids[0])
        except Exception:
            sh(f"fusermount3 -u -z {mnt}", check=False)
            sh(f"losetup -d {self.loop}", check=False)
            raise

    def peak_rss_kib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except FileNotFoundError:
            pass
        return 0

    def unmount(self):
        if sh(f"fusermount3 -u {self.mnt}", check=False).returncode != 0:
            sh(f"fusermount3 -u -z {self.mnt}")
        deadline = time.time() + 120
        while os.path.exists(f"/proc/{self.pid}") and time.time() < deadline:
            time.sleep(0.01)
        sh(f"losetup -d {self.loop}", check=False)
