#!/usr/bin/env bash
# The main job on a built-in sample: build the tools, then make a Raspberry Pi
# style card image with this project's pieces only:
#   vuimg        partition table (bootable FAT32 + Linux root), no root needed
#   vudevpartx   the partitions as files, so mkfs.vfat / mkfs.ext4 can format them
#   fusefatfs    the FAT boot partition mounted read-write, files copied in
# and finally check everything with the standard tools (sfdisk, fsck.fat,
# e2fsck, mtools). Needs FUSE (run as root, or with /dev/fuse usable).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p vuimg -p vufuse --bin vudevpartx --bin fusefatfs
bin=target/release
image=${1:-target/demo/card.img}
mkdir -p "$(dirname "$image")"
rm -f "$image"
work=$(mktemp -d)
cleanup() {
  for m in "$work/parts" "$work/boot"; do
    fusermount3 -u -z "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/parts" "$work/boot"

echo "== partition (vuimg)"
"$bin/vuimg" create "$image" 512M
"$bin/vuimg" part new "$image" mbr --id 0x5eed0001
"$bin/vuimg" part add "$image" fat32 --size 128M --bootable >/dev/null
"$bin/vuimg" part add "$image" linux >/dev/null
"$bin/vuimg" part list "$image"

echo "== format the partitions through vudevpartx"
"$bin/vudevpartx" "$image" "$work/parts"
ls -l "$work/parts"
mkfs.vfat -F 32 -n BOOT "$work/parts/disk1" >/dev/null
mkfs.ext4 -q -F -L rootfs -d images/sample/root "$work/parts/disk2"
fusermount3 -u "$work/parts"

echo "== fill the boot partition through fusefatfs (the only FAT partition is found by itself)"
"$bin/fusefatfs" -o rw+ "$image" "$work/boot"
cp -r images/sample/boot/. "$work/boot/"
ls -lR "$work/boot"
df -h "$work/boot" | tail -1
fusermount3 -u "$work/boot"

echo "== check with the standard tools"
sfdisk --verify "$image"
"$bin/vudevpartx" -o ro "$image" "$work/parts"
fsck.fat -n "$work/parts/disk1"
e2fsck -fn "$work/parts/disk2"
fusermount3 -u "$work/parts"
offset=$(( $(sfdisk --json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])') * 512 ))
echo "mtools reads config.txt straight from the image:"
mtype -i "$image@@$offset" ::/config.txt
echo "image: $image ($(du -h "$image" | cut -f1) allocated on disk, sparse)"
