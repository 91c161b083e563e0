#!/usr/bin/env bash
# Seeds every fuzz target's corpus with small real images (made here, never committed) and
# runs each target for SECONDS (default 600), JOBS at a time (default 2), at low priority.
# Crashes land in fuzz/artifacts/TARGET/; the summary prints each target's runs and result.
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz), mkfs.fat, mke2fs,
# mkfs.exfat and qemu-img.
#   fuzz/run.sh [SECONDS] [JOBS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
jobs=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(probe_table fat_open exfat_open ext_open image_formats vufs_layer nbd_server nbd_client posix_acl)
seed() { mkdir -p "corpus/$1"; cp "$2" "corpus/$1/seed-$(basename "$2")"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
truncate -s 160K "$tmp/fat12.bin" && mkfs.fat -F 12 "$tmp/fat12.bin" >/dev/null
MTOOLS_SKIP_CHECK=1 mmd -i "$tmp/fat12.bin" ::/dir && echo hi | MTOOLS_SKIP_CHECK=1 mcopy -i "$tmp/fat12.bin" - ::/dir/LONG_NAME_file.txt
seed fat_open "$tmp/fat12.bin"
truncate -s 256K "$tmp/ext2.bin" && mke2fs -q -F -t ext2 -b 1024 -N 16 "$tmp/ext2.bin"
seed ext_open "$tmp/ext2.bin"
truncate -s 1M "$tmp/exfat.bin" && mkfs.exfat -b 4K -c 512 "$tmp/exfat.bin" >/dev/null
seed exfat_open "$tmp/exfat.bin"
qemu-img create -q -f qcow2 -o cluster_size=512 "$tmp/small.qcow2" 1M
qemu-io -f qcow2 -c 'write -P 0xab 0 4k' "$tmp/small.qcow2" >/dev/null
seed image_formats "$tmp/small.qcow2"
qemu-img create -q -f vdi "$tmp/small.vdi" 1M && seed image_formats "$tmp/small.vdi"
python3 nbd_client_seed.py "$tmp/nbd-session.bin" && seed nbd_client "$tmp/nbd-session.bin"
printf 'type=c\nmode=0644\nuid=0\ngid=0\nrdev=1,3\n' > "$tmp/vstat" && seed vufs_layer "$tmp/vstat"
touch "$tmp/acl-file" && setfacl -m u:nobody:r,g:nogroup:rw "$tmp/acl-file" 2>/dev/null &&
  getfattr --absolute-names -e hex -n system.posix_acl_access "$tmp/acl-file" 2>/dev/null |
  sed -n 's/^system.posix_acl_access=0x//p' | xxd -r -p > "$tmp/acl" && [ -s "$tmp/acl" ] &&
  seed posix_acl "$tmp/acl"
cargo +nightly fuzz build -O >/dev/null
running=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  ( nice -n 19 cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" \
      -max_len=1100000 -rss_limit_mb=4096 -artifact_prefix="artifacts/$t/" > "$tmp/$t.log" 2>&1 \
      && echo "$t: ok, $(grep -o 'Done [0-9]* runs' "$tmp/$t.log" | tail -1)" \
      || echo "$t: FAILED (see fuzz/artifacts/$t/): $(grep -m1 -E 'panicked|ERROR|SUMMARY' "$tmp/$t.log")" ) &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait
