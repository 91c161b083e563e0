#!/usr/bin/env python3
"""The vufuse tutorial (virtualsquare.github.io tutorials/vufuse.md), replayed in umvu.

    tests/tutorials/vufuse.py --modules c      # VUOS's vufuseext2.so, vufusefatfs.so
    tests/tutorials/vufuse.py --modules ours   # this workspace's (see vututor.py)

Sections: vufuseext2 (make an ext2 image, mount it, write, remount, read,
fsck), vufuseext2 read-only on a root file system image (the page's
BusyBox-1.21.1-amd64-root_fs download is replaced by an image with the same
top-level names, made here with mkfs.ext2 -d), vufusefatfs on a floppy image
(the page's FreeDOS FD12FLOPPY.zip download is replaced by a 1.44 MB image
with the same names, made with mkfs.fat and mtools), and vufusearchive,
which neither module set has (skipped).  docs/TUTORIAL-VUOS.md is the
readable form of the same session.
"""

import os
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vututor import L, R, Tutorial  # noqa: E402

t = Tutorial("vufuse", __doc__)
# The page mounts on /mnt; the scripts mount on an empty scratch dir, $PWD/mnt,
# so that a mount that fails never lets a write reach the host's /mnt.
DATE = r"\w{3} [ \d]\d [ \d]\d:\d\d"

# ---------------------------------------------------------------- vufuseext2
t.start("vufuseext2: make an ext2 image, mount it, write, remount, read, fsck")
s = t.session()
s.step("vu_insmod vufuse", "vu_insmod vufuse", [], exact=True, rc=0)
s.step("truncate -s 10M img.ext2", "truncate -s 10M img.ext2", [], exact=True, rc=0)
s.step("mkfs.ext2 img.ext2", "/sbin/mkfs.ext2 img.ext2",
       [R(r"mke2fs 1\.\d+\.\d+ \(.*\)", wiki="mke2fs 1.45.6 (20-Mar-2020)"),
        L("Discarding device blocks: done"),
        L("Creating filesystem with 10240 1k blocks and 2560 inodes"),
        R(r"Filesystem UUID: [0-9a-f-]{36}"),
        L("Superblock backups stored on blocks: "),
        R(r"\s+8193", wiki="        8193"),
        L("Allocating group tables: done"),
        L("Writing inode tables: done"),
        L("Writing superblocks and filesystem accounting information: done")], rc=0)
s.step("vumount -t vufuseext2 -o rw+ img.ext2 $PWD/mnt", "vumount -t vufuseext2 -o rw+ $PWD/img.ext2 $PWD/mnt", [],
       exact=True, critical=True)
s.modules(["vufuse", "vufuseext2"])
s.step("ls $PWD/mnt", "ls $PWD/mnt", [L("lost+found")], exact=True)
s.step("echo ciao > $PWD/mnt/greetings", "echo ciao > $PWD/mnt/greetings", [], exact=True, rc=0)
s.step("ls -l $PWD/mnt", "ls -l $PWD/mnt",
       [R(r"total \d+", wiki="total 13"),
        R(rf"-rw-r--r-- 1 root root +5 {DATE} greetings",
          wiki="-rw-r--r-- 1 user user     5 Aug  7 14:13 greetings"),
        R(rf"drwx------ 2 root root 12288 {DATE} lost\+found",
          wiki="drwx------ 2 root root 12288 Aug  7 14:12 lost+found")], exact=True)
s.step("cat $PWD/mnt/greetings", "cat $PWD/mnt/greetings", [L("ciao")], exact=True)
s.step("vuumount $PWD/mnt/", "vuumount $PWD/mnt/", [], exact=True)
s.step("ls: the (empty) mount point again", "ls $PWD/mnt", [], exact=True)
s.step("vumount again", "vumount -t vufuseext2 -o rw+ $PWD/img.ext2 $PWD/mnt", [], exact=True, critical=True)
s.step("cat $PWD/mnt/greetings", "cat $PWD/mnt/greetings", [L("ciao")], exact=True)
s.step("vuumount $PWD/mnt", "vuumount $PWD/mnt", [], exact=True)
s.step("fsck.ext2 -f img.ext2", "/sbin/fsck.ext2 -f img.ext2",
       [R(r"e2fsck 1\.\d+\.\d+ \(.*\)", wiki="e2fsck 1.45.6 (20-Mar-2020)"),
        L("Pass 1: Checking inodes, blocks, and sizes"),
        L("Pass 2: Checking directory structure"),
        L("Pass 3: Checking directory connectivity"),
        L("Pass 4: Checking reference counts"),
        L("Pass 5: Checking group summary information"),
        R(r"img\.ext2: 12/2560 files \(0\.0% non-contiguous\), \d+/10240 blocks",
          wiki="img.ext2: 12/2560 files (0.0% non-contiguous), 422/10240 blocks")], exact=True, rc=0)
s.close()

# ---------------------------------------------------------------- read-only root fs
t.start("vufuseext2 -o ro: a root file system image (stand-in for BusyBox-1.21.1-amd64-root_fs)")
tree = os.path.join(t.work, "rootfs-tree")
for d in ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr"):
    os.makedirs(os.path.join(tree, d))
with open(os.path.join(tree, "etc", "hostname"), "w") as f:
    f.write("busybox\n")
os.symlink("bin/busybox", os.path.join(tree, "linuxrc"))
rootfs = os.path.join(t.work, "BusyBox-1.21.1-amd64-root_fs")
subprocess.run(["mkfs.ext2", "-q", "-d", tree, rootfs, "8M"], check=True)
s = t.session()
s.step("vu_insmod vufuse", "vu_insmod vufuse", [], exact=True, rc=0)
s.step("vumount -t vufuseext2 -o ro ROOTFS $PWD/mnt",
       "vumount -t vufuseext2 -o ro $PWD/BusyBox-1.21.1-amd64-root_fs $PWD/mnt", [], exact=True, critical=True)
s.modules(["vufuse", "vufuseext2"])
s.step("ls $PWD/mnt", "ls $PWD/mnt", [L("bin  dev  etc  linuxrc  lost+found  proc  root  sbin  sys  usr")], exact=True)
s.step("(not on the page) cat $PWD/mnt/etc/hostname", "cat $PWD/mnt/etc/hostname", [L("busybox")], exact=True)
s.step("(not on the page) -o ro refuses writes", "touch $PWD/mnt/newfile",
       [R(r"touch: cannot touch '/.*/mnt/newfile': Read-only file system")], exact=True, rc=1)
s.step("vuumount $PWD/mnt", "vuumount $PWD/mnt", [], exact=True)
s.close()

# ---------------------------------------------------------------- vufusefatfs
t.start("vufusefatfs -o ro: a floppy image (stand-in for FreeDOS 1.2 FLOPPY.img)")
floppy = os.path.join(t.work, "FLOPPY.img")
subprocess.run(["mkfs.fat", "-C", "-n", "FD12FLOPPY", floppy, "1440"], check=True, stdout=subprocess.DEVNULL)
for name, text in (("AUTOEXEC.BAT", "@echo off\r\n"), ("COMMAND.COM", "MZ"), ("FDCONFIG.SYS", "FILES=40\r\n"),
                   ("KERNEL.SYS", "MZ"), ("SETUP.BAT", "@echo off\r\n")):
    src = os.path.join(t.work, name)
    with open(src, "w") as f:
        f.write(text)
    subprocess.run(["mcopy", "-i", floppy, src, "::" + name], check=True)
subprocess.run(["mmd", "-i", floppy, "::FDSETUP"], check=True)
s = t.session()
s.step("vu_insmod vufuse", "vu_insmod vufuse", [], exact=True, rc=0)
s.step("vumount -t vufusefatfs -o ro FLOPPY.img $PWD/mnt", "vumount -t vufusefatfs -o ro $PWD/FLOPPY.img $PWD/mnt", [],
       exact=True, critical=True)
s.modules(["vufuse", "vufusefatfs"])
s.step("ls $PWD/mnt", "ls $PWD/mnt", [L("AUTOEXEC.BAT  COMMAND.COM  FDCONFIG.SYS  FDSETUP  KERNEL.SYS  SETUP.BAT")],
       exact=True)
s.step("(not on the page) cat $PWD/mnt/FDCONFIG.SYS", "cat $PWD/mnt/FDCONFIG.SYS", [L("FILES=40")], exact=True)
s.step("vuumount /mnt (the page has 'vuumount/mnt')", "vuumount $PWD/mnt", [], exact=True)
s.close()

# ---------------------------------------------------------------- vufusearchive
t.start("vufusearchive: iso, tar, zip")
t.skip_step("vumount -t vufusearchive ...", "no vufusearchive.so in VUOS 0.9.4 nor in this workspace")

t.finish()
