#!/usr/bin/env bash
# The main job on a built-in sample: build vuimg, make a Raspberry Pi style
# card image (bootable FAT32 partition + Linux root) without root or mounts,
# then show the table as vuimg reads it and check it with sfdisk.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p vuimg
vuimg=target/release/vuimg
image=${1:-target/demo/card.img}
mkdir -p "$(dirname "$image")"
rm -f "$image"

"$vuimg" create "$image" 512M
"$vuimg" part new "$image" mbr --id 0x5eed0001
"$vuimg" part add "$image" fat32 --size 128M --bootable >/dev/null
"$vuimg" part add "$image" linux >/dev/null
"$vuimg" part list "$image"

echo
echo "sfdisk --verify:"
sfdisk --verify "$image"
# vuimg's JSON carries the same fields as sfdisk's: compare them.
if diff <("$vuimg" part list "$image" --json | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; print([(p["start"],p["size"],p["type"],p.get("bootable",False)) for p in t["partitions"]])') \
        <(sfdisk --json "$image" | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; print([(p["start"],p["size"],p["type"],p.get("bootable",False)) for p in t["partitions"]])'); then
  echo "vuimg and sfdisk agree on every start, size, type and flag."
else
  echo "vuimg and sfdisk disagree (see the diff above)" >&2
  exit 1
fi
echo "image: $image ($(du -h "$image" | cut -f1) allocated on disk, sparse)"
