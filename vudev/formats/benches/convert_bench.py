#!/usr/bin/env python3
"""vuimg convert vs qemu-img convert: a 1 GiB mostly-written raw image to qcow2, and that
qcow2 back to raw. Wall time and peak RSS (/usr/bin/time -v), page cache dropped before
each, the output's fsync included (`sync OUT`) (qemu-img convert writes its target with cache=unsafe,
no flush of its own); outputs checked with `qemu-img compare` against the source.
The source: 1 GiB, in every 64 MiB 56 MiB of random data and an 8 MiB hole (87.5% written).
Runs interleaved (one of each tool in turn). Needs root (drop_caches).

Usage: convert_bench.py [--vuimg PATH] [--runs N] [--dir DIR]
"""

import argparse
import os
import re
import statistics
import subprocess

MIB = 1 << 20


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.returncode}: {r.stderr.strip()[-400:]}")
    return r


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed_v(cmd, out):
    """(wall seconds, peak RSS KiB) of `cmd` and the fsync of `out` (`sync FILE`: the output
    only, not other programs' dirty data on a shared machine), from /usr/bin/time -v."""
    r = sh(f"/usr/bin/time -v sh -c '{cmd} && sync {out}'")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    h, m, s = wall.groups()
    secs = (int(h) if h else 0) * 3600 + int(m) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return secs, rss


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vuimg", default=os.path.join(repo, "target/release/vuimg"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default=os.path.join(repo, "target/convert-bench"))
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    d = args.dir
    src = f"{d}/src.raw"
    if not os.path.exists(src):
        sh(f"truncate -s 1G {src}")
        for i in range(16):
            sh(f"head -c {56 * MIB} /dev/urandom | dd of={src} bs=1M seek={i * 64} conv=notrunc status=none")
    sh(f"qemu-img convert -f raw -O qcow2 {src} {d}/ref.qcow2")
    used = sh(f"du -k {src}").stdout.split()[0]
    print(f"source: {src}, 1 GiB, {int(used) // 1024} MiB allocated")
    tools = {
        "raw->qcow2": [
            ("vuimg convert", f"{args.vuimg} convert -q --force {src} {d}/out.qcow2"),
            ("qemu-img convert", f"qemu-img convert -f raw -O qcow2 {src} {d}/out.qcow2"),
        ],
        "qcow2->raw": [
            ("vuimg convert", f"{args.vuimg} convert -q --force -f raw {d}/ref.qcow2 {d}/out.raw"),
            ("qemu-img convert", f"qemu-img convert -f qcow2 -O raw {d}/ref.qcow2 {d}/out.raw"),
        ],
    }
    res = {(job, name): ([], []) for job, rows in tools.items() for name, _ in rows}
    for run in range(args.runs):
        for job, rows in tools.items():
            out = f"{d}/out.qcow2" if job == "raw->qcow2" else f"{d}/out.raw"
            # Which tool goes first alternates run by run (ABBA): on this kind of machine the
            # same command's time, even its CPU time, swings 2-3x with what ran just before it.
            for name, cmd in rows if run % 2 == 0 else reversed(rows):
                if os.path.exists(out):
                    os.unlink(out)
                drop_caches()
                secs, rss = timed_v(cmd, out)
                res[(job, name)][0].append(secs)
                res[(job, name)][1].append(rss)
                cmp = sh(f"qemu-img compare {src} {out}", check=False)
                if cmp.returncode != 0:
                    print(f"WARNING: {job} {name}: qemu-img compare: {cmp.stdout.strip()} {cmp.stderr.strip()}")
                if job == "raw->qcow2":
                    chk = sh(f"qemu-img check {out}", check=False)
                    if chk.returncode != 0:
                        print(f"WARNING: {job} {name}: qemu-img check: {chk.stdout.strip()[-300:]}")
                alloc = int(sh(f"du -k {out}").stdout.split()[0]) // 1024
                print(f"{job} {name}: {secs:.3f} s, {rss // 1024} MiB, output {alloc} MiB allocated", flush=True)
    print(f"\nseconds (incl. sync OUT), min / median of {args.runs}; peak RSS (max)\n")
    print("| conversion | vuimg convert | qemu-img convert | qemu / vuimg (>1: vuimg faster) | peak RSS vuimg / qemu-img |")
    print("|---|---|---|---|---|")
    for job in tools:
        a, ra = res[(job, "vuimg convert")]
        b, rb = res[(job, "qemu-img convert")]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {job} | {min(a):.3f} / {ma:.3f} | {min(b):.3f} / {mb:.3f} | {mb / ma:.2f} | {max(ra) / 1024:.1f} / {max(rb) / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
