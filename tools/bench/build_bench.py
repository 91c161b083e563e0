#!/usr/bin/env python3
"""Bench: `vuimg build` of the Raspberry Pi example vs the equivalent shell
pipeline of the real tools, with a generated 200 MiB tree of mixed file sizes.

Layout as images/rpi.toml: 512 MiB image, MBR, 128 MiB bootable FAT32 boot
partition, ext4 root (4 KiB blocks) on the rest. Both sides get the same
inputs: boot/ (about 40 MiB) and root/ (about 160 MiB).

  vuimg:    vuimg build bench.toml -o out.img
  pipeline: truncate; sfdisk; mkfs.vfat and mcopy -s on a separate boot file,
            mkfs.ext4 -d root/ on a separate root file; dd both into place
            (conv=sparse,notrunc)

Each side runs 3 times, alternating; the report gives every time, the medians,
the ratio and the peak RSS (GNU time's maximum resident set size: for the
pipeline, the largest of its commands). Both outputs are checked with
fsck.fat -n and e2fsck -fn once, so a fast but broken result cannot win.

Usage: tools/bench/build_bench.py [--reps N] [--keep DIR]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20


def generate_tree(root):
    """Deterministic mixed tree: many small files, some medium, a few large."""
    rng = random.Random(7)
    chunk = bytes(rng.getrandbits(8) for _ in range(MIB))

    def write(path, size):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            off = rng.randrange(MIB)
            left = size
            while left > 0:
                n = min(left, MIB - off)
                f.write(chunk[off : off + n])
                left -= n
                off = 0

    boot = os.path.join(root, "boot")
    rootfs = os.path.join(root, "root")
    total = 0
    # boot: kernels and firmware blobs (large), device trees and overlays (small).
    for i, size in enumerate([8 * MIB, 8 * MIB, 6 * MIB, 4 * MIB, 3 * MIB, 2 * MIB]):
        write(os.path.join(boot, f"kernel{i}.img"), size)
        total += size
    for i in range(300):
        size = rng.randrange(1024, 40 * 1024)
        write(os.path.join(boot, "overlays", f"overlay-{i:03}.dtbo"), size)
        total += size
    # root: libraries and binaries (medium), configs and docs (small), a few big files.
    for i in range(3):
        size = rng.randrange(10 * MIB, 16 * MIB)
        write(os.path.join(rootfs, "usr/lib/big", f"blob{i}.so"), size)
        total += size
    for i in range(150):
        size = rng.randrange(64 * 1024, 1024 * 1024)
        write(os.path.join(rootfs, "usr/lib", f"d{i % 10}", f"lib{i}.so"), size)
        total += size
    i = 0
    target = 200 * MIB
    while total < target:
        size = rng.randrange(100, 16 * 1024)
        write(os.path.join(rootfs, "usr/share", f"pkg{i % 60:02}", f"file-{i:05}.txt"), size)
        total += size
        i += 1
    return boot, rootfs, total


def timed(cmd, env=None, cwd=None):
    """Runs `cmd` (a shell string) under GNU time; returns (seconds, peak RSS KiB, CPU seconds)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", t.name, "bash", "-c", cmd]
        res = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"failed: {cmd}\n{res.stdout}\n{res.stderr}")
        secs, rss, user, system = t.read().split()[-4:]
        return float(secs), int(rss), float(user) + float(system)


def check(image, scratch):
    """fsck.fat -n on partition 1, e2fsck -fn on partition 2."""
    part = os.path.join(scratch, "p1.img")
    subprocess.run(
        f"dd if={image} of={part} bs=1M skip=1 count=128 conv=sparse status=none",
        shell=True, check=True)
    fat = subprocess.run(["fsck.fat", "-n", part], capture_output=True, text=True)
    os.remove(part)
    ext = subprocess.run(["e2fsck", "-fn", f"{image}?offset={264192 * 512}"],
                         capture_output=True, text=True)
    if fat.returncode != 0 or len(fat.stdout.strip().splitlines()) != 2 or ext.returncode != 0:
        sys.exit(f"{image} does not check clean:\n{fat.stdout}{ext.stdout}{ext.stderr}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", help="work directory to use and keep")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "vuimg"], cwd=REPO, check=True)
    vuimg = os.path.join(REPO, "target/release/vuimg")
    work = args.keep or tempfile.mkdtemp(prefix="vuimg-bench-")
    os.makedirs(work, exist_ok=True)
    tree = os.path.join(work, "tree")
    if not os.path.isdir(tree):
        boot, root, total = generate_tree(tree)
    else:
        boot, root = os.path.join(tree, "boot"), os.path.join(tree, "root")
        total = int(subprocess.check_output(["du", "-sb", "--apparent-size", tree]).split()[0])
    nfiles = sum(len(f) for _, _, f in os.walk(tree))
    print(f"tree: {total / MIB:.1f} MiB in {nfiles} files ({work})")

    spec = os.path.join(work, "bench.toml")
    with open(spec, "w") as f:
        f.write(f"""size = "512M"
table = "mbr"
[[partition]]
type = "fat32"
size = "128M"
bootable = true
fs = "fat32"
label = "BOOT"
contents = [ {{ from = "{boot}", to = "/" }} ]
[[partition]]
type = "linux"
fs = "ext4"
label = "rootfs"
block_size = 4096
contents = [ {{ from = "{root}", to = "/" }} ]
""")
    out_v = os.path.join(work, "vuimg.img")
    out_p = os.path.join(work, "pipeline.img")
    rootimg = os.path.join(work, "root.part")
    vuimg_cmd = f"rm -f {out_v} && {vuimg} build -q {spec} -o {out_v}"
    bootimg = os.path.join(work, "boot.part")
    pipeline_cmd = f"""set -e
rm -f {out_p} {rootimg} {bootimg}
truncate -s 512M {out_p}
printf 'label: dos\\nstart=2048, size=262144, type=c, bootable\\nstart=264192, type=83\\n' | sfdisk -q {out_p}
truncate -s 128M {bootimg}
mkfs.vfat -F 32 -n BOOT {bootimg} >/dev/null
mcopy -s -p -m -i {bootimg} {boot}/* ::/
dd if={bootimg} of={out_p} bs=1M seek=1 conv=sparse,notrunc status=none
truncate -s {784384 * 512} {rootimg}
mkfs.ext4 -q -F -L rootfs -b 4096 -d {root} {rootimg}
dd if={rootimg} of={out_p} bs=1M seek={264192 * 512} oflag=seek_bytes conv=sparse,notrunc status=none
rm -f {rootimg} {bootimg}
"""
    runs = {"vuimg build": [], "shell pipeline": []}
    for rep in range(args.reps):
        for name, cmd in (("vuimg build", vuimg_cmd), ("shell pipeline", pipeline_cmd)):
            subprocess.run(["sync"])
            runs[name].append(timed(cmd))
            secs, rss, cpu = runs[name][-1]
            print(f"  rep {rep + 1} {name}: {secs:.2f} s, {cpu:.2f} s CPU, {rss / 1024:.0f} MiB peak RSS")
    check(out_v, work)
    check(out_p, work)
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
    rss = {k: max(r[1] for r in v) for k, v in runs.items()}
    print()
    print("| | runs (s) | median (s) | median CPU (s) | peak RSS |")
    print("|---|---|---|---|---|")
    for k, v in runs.items():
        times = " / ".join(f"{r[0]:.2f}" for r in v)
        print(f"| {k} | {times} | {med[k]:.2f} | {cpu[k]:.2f} | {rss[k] / 1024:.0f} MiB |")
    ratio = med["shell pipeline"] / med["vuimg build"]
    cpu_ratio = cpu["shell pipeline"] / cpu["vuimg build"]
    print(f"\nspeed-up of vuimg build over the pipeline: x{ratio:.2f} wall, x{cpu_ratio:.2f} CPU (median / median)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
