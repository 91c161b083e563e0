#!/usr/bin/env bash
# The main job on a built-in sample: build the tools, then make a Raspberry Pi
# style card image from one SPEC with this project's pieces only, no root,
# loop devices or mounts needed:
#   vuimg build images/rpi.toml   MBR table, bootable FAT32 boot partition
#                                 (formatted in process) and an ext4 root
#                                 (mke2fs), filled from images/sample
#   vuimg ls / cat                read it back through the same drivers
# then check everything with the standard tools (sfdisk, fsck.fat, e2fsck,
# mtools, debugfs). If FUSE is usable, the boot partition is also mounted
# with fusefatfs and listed.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== build vuimg and fusefatfs (cargo build --release; a few minutes the first time on a 2-core machine)"
# Cargo's own lines for this project's crates, so a first build shows it is moving.
set +o pipefail
cargo build --release -p vuimg -p vufuse --bin vuimg --bin fusefatfs 2>&1 |
  grep --line-buffered -E '^ *(Compiling (vu|integration|testkit)|Finished|error|warning)'
built=${PIPESTATUS[0]}
set -o pipefail
[ "$built" -eq 0 ] || { echo "demo: the build failed (cargo build --release -p vuimg shows why)" >&2; exit 1; }
# Where cargo put them: CARGO_TARGET_DIR, as cargo reads it (relative to this folder).
bin=${CARGO_TARGET_DIR:-target}/release
image=${1:-target/demo/card.img}
mkdir -p "$(dirname "$image")"
work=$(mktemp -d)
cleanup() {
  fusermount3 -u -z "$work/boot" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== build the card from images/rpi.toml (vuimg build)"
"$bin/vuimg" build images/rpi.toml -o "$image"
"$bin/vuimg" part list "$image"

echo "== read it back (vuimg ls / cat, IMAGE@N:/path)"
"$bin/vuimg" ls -l "$image@1:/"
"$bin/vuimg" cat "$image@1:/config.txt"
"$bin/vuimg" ls -l "$image@2:/etc"
echo "hostname: $("$bin/vuimg" cat "$image@2:/etc/hostname")"

echo "== edit it in place"
"$bin/vuimg" mkdir -p "$image@2:/home/pi"
echo "dtparam=audio=on" > "$work/extra.txt"
"$bin/vuimg" cp "$work/extra.txt" "$image@1:/extra.txt"
"$bin/vuimg" ls "$image@1:/"

echo "== check with the standard tools"
sfdisk --verify "$image"
start() { sfdisk --json "$image" | python3 -c "import json,sys; p=json.load(sys.stdin)['partitiontable']['partitions'][$1]; print(p['start']*512, p['size']*512)"; }
read -r boot_off boot_len < <(start 0)
read -r root_off _ < <(start 1)
dd if="$image" of="$work/boot.img" bs=1M iflag=skip_bytes,count_bytes skip="$boot_off" count="$boot_len" conv=sparse status=none
fsck.fat -n "$work/boot.img"
e2fsck -fn "$image?offset=$root_off"
echo "mtools reads config.txt straight from the image:"
mtype -i "$image@@$boot_off" ::/config.txt
echo "debugfs reads /etc/fstab:"
debugfs -R "cat /etc/fstab" "$image?offset=$root_off" 2>/dev/null

if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
  echo "== mount the boot partition with fusefatfs (read-only) and list it"
  mkdir -p "$work/boot"
  if "$bin/fusefatfs" "$image" "$work/boot" 2>"$work/fuse.err"; then
    ls -lR "$work/boot"
    df -h "$work/boot" | tail -1
    fusermount3 -u "$work/boot"
  else
    echo "(FUSE mount not possible here: $(cat "$work/fuse.err"))"
  fi
else
  echo "(no FUSE here: skipping the mount demo)"
fi
echo "image: $image ($(du -h "$image" | cut -f1) allocated on disk, sparse)"
