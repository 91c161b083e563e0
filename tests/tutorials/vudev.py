#!/usr/bin/env python3
"""The vudev tutorial (virtualsquare.github.io tutorials/vudev.md), replayed in umvu.

    tests/tutorials/vudev.py --modules c      # VUOS's vudevramdisk.so, vudevpartx.so, ...
    tests/tutorials/vudev.py --modules ours   # this workspace's (see vututor.py)

Sections: vudevramdisk (a RAM disk, formatted and mounted with vufuseext2),
vudevpartx (a GPT disk made with fdisk, a partition formatted and mounted),
and the page's "practical example" (edit config.txt on the FAT boot partition
of a Raspberry Pi style image; the RaspiOS download is replaced by a small
image made here with sfdisk and mkfs.vfat).  docs/TUTORIAL-VUOS.md is the
readable form of the same session.
"""

import json
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vututor import L, Opt, R, Tutorial  # noqa: E402

MKE2FS = R(r"mke2fs 1\.\d+\.\d+ \(.*\)", wiki="mke2fs 1.45.6 (20-Mar-2020)")
UUID = R(r"Filesystem UUID: [0-9a-f-]{36}")

t = Tutorial("vudev", __doc__)

# ---------------------------------------------------------------- vudevramdisk
t.start("vudevramdisk: a 10 MB RAM disk, formatted ext2, mounted with vufuseext2")
s = t.session()
s.step("vu_insmod vudev vufuse", "vu_insmod vudev vufuse", [], exact=True, rc=0)
s.step("vumount the ramdisk", "vumount -t vudevramdisk -o size=10M none /dev/ramdisk", [], exact=True, critical=True)
s.modules(["vudev", "vudevramdisk"])
s.step("ls -l shows a block device", "ls -l /dev/ramdisk",
       [R(r"brw------- \d+ root root 0, 0 \w{3} [ \d]\d [ \d]\d:\d\d /dev/ramdisk",
          wiki="brw------- 0 user user 0, 0 Aug  8 09:06 /dev/ramdisk")], exact=True)
# The page shows 200000000 (32 MiB, vudevramdisk's default size); 10M is
# 50000000 in octal.
s.step("od -x: 10 MB of zeros", "od -x /dev/ramdisk",
       [L("0000000 0000 0000 0000 0000 0000 0000 0000 0000"), L("*"),
        L("50000000", wiki="200000000")], exact=True, timeout=120)
s.step("mkfs.ext2 on the ramdisk", "/sbin/mkfs.ext2 /dev/ramdisk",
       [MKE2FS,
        Opt(L("warning: Unable to get device geometry for /dev/ramdisk")),
        L("Creating filesystem with 10240 1k blocks and 2560 inodes",
          wiki="Creating filesystem with 32768 1k blocks and 8192 inodes"),
        UUID,
        L("Superblock backups stored on blocks: "),
        R(r"\s+8193", wiki="        8193, 24577"),
        L("Allocating group tables: done"),
        L("Writing inode tables: done"),
        L("Writing superblocks and filesystem accounting information: done")], rc=0, timeout=120)
s.step("vumount -t vufuseext2 the ramdisk", "vumount -t vufuseext2 -o rw+ /dev/ramdisk $PWD/mnt", [], exact=True, critical=True)
s.modules(["vufuse", "vufuseext2"])
s.step("ls $PWD/mnt", "ls $PWD/mnt", [L("lost+found")], exact=True)
s.close()

# ---------------------------------------------------------------- vudevpartx
t.start("vudevpartx: a GPT disk image partitioned with fdisk, /dev/hda2 formatted and mounted")
s = t.session()
s.step("vu_insmod vudev vufuse", "vu_insmod vudev vufuse", [], exact=True, rc=0)
s.step("truncate -s 200M diskimg", "truncate -s 200M diskimg", [], exact=True, rc=0)
CMD = r"Command \(m for help\): "
s.dialog_step("fdisk: g, n, n, p, w", "/sbin/fdisk diskimg", [
    (CMD, "g"),
    (CMD, "n"),
    (r"Partition number \(1-128, default 1\): ", ""),
    (r"First sector \(2048-409566, default 2048\): ", ""),
    # (fdisk cuts prompts wider than the terminal with "<": match their end)
    (r"\(2048-409566, default \d+\): ", "+100M"),
    (CMD, "n"),
    (r"Partition number \(2-128, default 2\): ", "2"),
    (r"First sector \(206848-409566, default 206848\): ", ""),
    (r"\(206848-409566, default \d+\): ", ""),
    (CMD, "p"),
    (CMD, "w"),
], [
    R(r"Welcome to fdisk \(util-linux 2\.\d+.*\)\.", wiki="Welcome to fdisk (util-linux 2.36)."),
    L("Device does not contain a recognized partition table."),
    R(r"Created a new GPT disklabel \(GUID: [0-9A-F-]{36}\)\."),
    L("Created a new partition 1 of type 'Linux filesystem' and of size 100 MiB."),
    R(r"Created a new partition 2 of type 'Linux filesystem' and of size \d+ MiB\.",
      wiki="Created a new partition 2 of type 'Linux filesystem' and of size 99 MiB."),
    L("Disk diskimg: 200 MiB, 209715200 bytes, 409600 sectors"),
    L("Disklabel type: gpt"),
    R(r"Device\s+Start\s+End\s+Sectors\s+Size Type"),
    R(r"diskimg1\s+2048\s+206847\s+204800\s+100M Linux filesystem"),
    R(r"diskimg2\s+206848\s+\d+\s+\d+\s+\d+M Linux filesystem",
      wiki="diskimg2   206848 409566 202719   99M Linux filesystem"),
    L("The partition table has been altered."),
    L("Syncing disks."),
])
# fdisk 2.38 proposes a last sector aligned to 1 MiB (407551) where the page's
# 2.36 proposed 409566: partition 2 is a little smaller, and mkfs's numbers
# follow.  They are computed with the host's mke2fs -n on a file of that size.
p2_start, p2_size = 206848, 202719
try:
    table = json.loads(subprocess.run(["sfdisk", "-J", os.path.join(t.work, "diskimg")],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout)
    p2 = table["partitiontable"]["partitions"][1]
    p2_start, p2_size = p2["start"], p2["size"]
except (ValueError, KeyError, IndexError):
    pass
probe = os.path.join(t.work, "p2-size-probe")
subprocess.run(["truncate", "-s", str(p2_size * 512), probe], check=True)
summary = subprocess.run(["mke2fs", "-t", "ext4", "-n", "-F", probe], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
os.unlink(probe)
created = next((l for l in summary.splitlines() if l.startswith("Creating filesystem")),
               "Creating filesystem with 101356 1k blocks and 25376 inodes")
backups = next((l.strip() for l in summary.splitlines() if l.startswith("\t")), "8193, 24577, 40961, 57345, 73729")
inodes = created.split(" and ")[1].split()[0]
s.step("vumount -t vudevpartx diskimg /dev/hda", "vumount -t vudevpartx $PWD/diskimg /dev/hda", [], exact=True, critical=True)
s.modules(["vudev", "vudevpartx"])
s.step("mkfs.ext4 /dev/hda2", "/sbin/mkfs.ext4 /dev/hda2",
       [MKE2FS,
        Opt(L("warning: Unable to get device geometry for /dev/hda2")),
        L(created, wiki="Creating filesystem with 101356 1k blocks and 25376 inodes"),
        UUID,
        L("Superblock backups stored on blocks: "),
        R(r"\s+" + re.escape(backups), wiki="        8193, 24577, 40961, 57345, 73729"),
        L("Allocating group tables: done"),
        L("Writing inode tables: done"),
        L("Creating journal (4096 blocks): done"),
        L("Writing superblocks and filesystem accounting information: done")], rc=0, timeout=180)
s.step("mount -t vufuseext2 /dev/hda2 MNT (mount(8), as the page does)",
       "mount -t vufuseext2 -o rw+ /dev/hda2 $PWD/mnt", [], exact=True, rc=0, critical=True)
s.modules(["vufuse", "vufuseext2"])
s.step("ls $PWD/mnt", "ls $PWD/mnt", [L("lost+found")], exact=True)
s.step("(not on the page) write a file, vuumount", "echo hello > $PWD/mnt/hello && vuumount $PWD/mnt && vuumount /dev/hda",
       [], exact=True, rc=0)
s.close()
# Outside umvu: the partition table and the ext4 volume are really in the image.
t.host("(outside) sfdisk -l diskimg shows both partitions", ["sfdisk", "-l", "diskimg"],
       [R(r"diskimg1\s+2048\s+206847\s+204800\s+100M Linux filesystem"),
        R(rf"diskimg2\s+{p2_start}\s+{p2_start + p2_size - 1}\s+{p2_size}\s+\d+M Linux filesystem")])
t.host("(outside) e2fsck -fn on partition 2 is clean", ["e2fsck", "-fn", f"diskimg?offset={p2_start * 512}"],
       [R(rf"diskimg: 12/{inodes} files .*")])
t.host("(outside) the file is there", ["debugfs", "-R", "cat /hello", f"diskimg?offset={p2_start * 512}"],
       [L("hello")])

# ---------------------------------------------------------------- practical example
t.start("practical example: edit config.txt on the FAT boot partition of a Raspberry Pi image")
# Stand-in for 2020-05-27-raspios-buster-lite-armhf.img: MBR, FAT32 boot
# partition (type c) with a config.txt, Linux root partition after it.
img = os.path.join(t.work, "raspios-lite-standin.img")
subprocess.run(["truncate", "-s", "128M", img], check=True)
subprocess.run(["sfdisk", "-q", img], input="label: dos\n2048,131072,c\n,,83\n", text=True, check=True)
subprocess.run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "BOOT", "--offset", "2048", img, str(131072 // 2)],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open(os.path.join(t.work, "config.txt"), "w") as f:
    f.write("# For more options and information see\ndtparam=audio=on\n")
subprocess.run(["mcopy", "-i", img + "@@1M", os.path.join(t.work, "config.txt"), "::config.txt"], check=True)
s = t.session()
s.step("vu_insmod vudev vufuse", "vu_insmod vudev vufuse", [], exact=True, rc=0)
s.step("mount -t vudevpartx IMAGE /dev/hdp", f"mount -t vudevpartx $PWD/{os.path.basename(img)} /dev/hdp",
       [], exact=True, rc=0, critical=True)
s.step("mount -t vufusefatfs -o rw+ /dev/hdp1 $PWD/mnt", "mount -t vufusefatfs -o rw+ /dev/hdp1 $PWD/mnt", [],
       exact=True, rc=0, critical=True)
s.modules(["vudev", "vudevpartx", "vufuse", "vufusefatfs"])
s.step("cat $PWD/mnt/config.txt", "cat $PWD/mnt/config.txt",
       [L("# For more options and information see"), L("dtparam=audio=on")], exact=True)
s.step("update config.txt (the page uses vi)", "echo 'enable_uart=1' >> $PWD/mnt/config.txt", [], exact=True, rc=0)
s.step("vuumount $PWD/mnt", "vuumount $PWD/mnt", [], exact=True)
s.step("vuumount /dev/hdp", "vuumount /dev/hdp", [], exact=True)
s.close()
t.host("(outside) mtype shows the new line", ["mtype", "-i", img + "@@1M", "::config.txt"],
       [L("# For more options and information see"), L("dtparam=audio=on"), L("enable_uart=1")], exact=True)
boot = os.path.join(t.work, "boot.part")
subprocess.run(["dd", f"if={img}", f"of={boot}", "bs=1M", "skip=1", "count=64", "status=none"], check=True)
t.host("(outside) fsck.fat -n on the boot partition is clean", ["fsck.fat", "-n", boot],
       [R(r".*boot\.part: \d+ files, \d+/\d+ clusters")])

t.finish()
