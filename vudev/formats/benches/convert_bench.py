#!/usr/bin/env python3
"""vuimg convert vs qemu-img convert: a 1 GiB mostly-written raw image to qcow2, and that
qcow2 back to raw; and (jobs "sparse-qcow2->raw", "sparse-vmdk->raw") a 2 GiB qcow2 and a
monolithicSparse VMDK holding 200 MiB scattered in 400 runs of 512 KiB, to raw, where
what counts is that holes are neither read nor written. Wall time and peak RSS (/usr/bin/time -v), page cache dropped before
each, the output's fsync included (`sync OUT`) (qemu-img convert writes its target with cache=unsafe,
no flush of its own); outputs checked with `qemu-img compare` against the source.
The source: 1 GiB, in every 64 MiB 56 MiB of random data and an 8 MiB hole (87.5% written).
Runs interleaved (one of each tool in turn). Needs root (drop_caches).

Usage: convert_bench.py [--vuimg PATH] [--runs N] [--dir DIR] [--jobs JOB,...]
"""

import argparse
import os
import random
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
    p.add_argument("--jobs", default="raw->qcow2,qcow2->raw,sparse-qcow2->raw,sparse-vmdk->raw",
                   help="comma-separated jobs to run (default: all four)")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    d = args.dir
    src = f"{d}/src.raw"
    if not os.path.exists(src):
        sh(f"truncate -s 1G {src}")
        for i in range(16):
            sh(f"head -c {56 * MIB} /dev/urandom | dd of={src} bs=1M seek={i * 64} conv=notrunc status=none")
    sh(f"qemu-img convert -f raw -O qcow2 {src} {d}/ref.qcow2")
    # The sparse source: 2 GiB, 400 runs of 512 KiB of random data at seeded 64 KiB-aligned
    # offsets (about 200 MiB; overlapping runs make it a little less).
    sparse = f"{d}/sparse.raw"
    if not os.path.exists(sparse):
        rng = random.Random(14)
        with open(sparse, "wb") as f:
            f.truncate(2 << 30)
            for _ in range(400):
                f.seek(rng.randrange(0, (2 << 30) - MIB // 2, 64 << 10))
                f.write(os.urandom(MIB // 2))
    sh(f"qemu-img convert -f raw -O qcow2 {sparse} {d}/sparse.qcow2")
    sh(f"qemu-img convert -f raw -O vmdk {sparse} {d}/sparse.vmdk")
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
    for fmt in ("qcow2", "vmdk"):
        tools[f"sparse-{fmt}->raw"] = [
            ("vuimg convert", f"{args.vuimg} convert -q --force -f raw {d}/sparse.{fmt} {d}/out.raw"),
            ("qemu-img convert", f"qemu-img convert -f {fmt} -O raw {d}/sparse.{fmt} {d}/out.raw"),
        ]
    wanted = args.jobs.split(",")
    tools = {job: rows for job, rows in tools.items() if job in wanted}
    original = {job: sparse if job.startswith("sparse") else src for job in tools}
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
                cmp = sh(f"qemu-img compare {original[job]} {out}", check=False)
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
