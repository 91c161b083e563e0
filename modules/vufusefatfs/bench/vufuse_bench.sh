#!/usr/bin/env bash
# Reading a 100 MiB file through vufusefatfs under the real umvu: this
# project's vufusefatfs.so against the C one (fusefatfs 0.4) installed in
# umvu's module directory, on the same image, in one run.
#
#   cargo build --release -p vufusefatfs
#   modules/vufusefatfs/bench/vufuse_bench.sh [OUR_SO] [C_SO]
#
# Each reader runs in a fresh umvu (vu_insmod vufuse; vumount; read; vuumount)
# so peak RSS (of the umvu process tree, /usr/bin/time %M) is per run. Times
# are the reader's own (bash `time`, inside umvu), seconds. The image is
# mounted read-only (the default of both modules) and is in the host page
# cache (warm) for every run. Readers: cat, dd bs=1M, dd bs=4k.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
ours=${1:-$repo/target/release/libvufusefatfs.so}
theirs=${2:-/usr/local/lib/vu/modules/vufusefatfs.so}
for tool in umvu mkfs.vfat mcopy /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "skipped: $tool not installed"; exit 0; }
done
[ -f "$ours" ] || { echo "build it first: cargo build --release -p vufusefatfs ($ours missing)"; exit 1; }
[ -f "$theirs" ] || { echo "skipped: C module $theirs absent"; exit 0; }

work=$(mktemp -d /tmp/vufuse-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/home-rust/.vu/modules" "$work/home-c" "$work/mnt"
cp "$ours" "$work/home-rust/.vu/modules/vufusefatfs.so"
img=$work/fat.img
truncate -s 256M "$img"
mkfs.vfat -F 32 -n BENCH "$img" >/dev/null
head -c 100M /dev/urandom > "$work/big.bin"
MTOOLS_SKIP_CHECK=1 mcopy -i "$img" "$work/big.bin" ::/big.bin
want=$(md5sum < "$work/big.bin" | cut -d' ' -f1)
rm "$work/big.bin"
cat "$img" > /dev/null

# run IMPL READER -> prints "seconds maxrss_kib"
run() {
  local impl=$1 reader=$2 home=$work/home-$1
  local script="
    vu_insmod vufuse
    vumount -t vufusefatfs $img $work/mnt
    grep -m1 -o '/[^ ]*vufusefatfs[^ ]*' /proc/\$PPID/maps > $work/loaded
    TIMEFORMAT=%R
    { time $reader < $work/mnt/big.bin > /dev/null ; } 2> $work/seconds
    vuumount $work/mnt"
  HOME=$home /usr/bin/time -f %M -o "$work/rss" timeout -s KILL 900 umvu bash -c "$script" >/dev/null 2>&1 || true
  local loaded
  loaded=$(cat "$work/loaded" 2>/dev/null || echo none)
  case "$impl:$loaded" in
    rust:*"$work"*|c:/usr/*) ;;
    *) echo "wrong module loaded for $impl: $loaded" >&2; exit 1 ;;
  esac
  echo "$(tail -1 "$work/seconds") $(cat "$work/rss")"
}

# Both modules read the same bytes.
for impl in rust c; do
  got=$(HOME=$work/home-$impl timeout -s KILL 300 umvu bash -c "vu_insmod vufuse; vumount -t vufusefatfs $img $work/mnt; md5sum < $work/mnt/big.bin; vuumount $work/mnt" 2>/dev/null | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "$impl read wrong data: $got != $want"; exit 1; }
done

printf '%-14s %10s %10s %8s %12s %12s\n' reader "C s" "Rust s" "C/Rust" "C RSS KiB" "Rust RSS KiB"
for reader in "cat" "dd bs=1M" "dd bs=4k"; do
  read -r c_s c_rss < <(run c "$reader")
  read -r r_s r_rss < <(run rust "$reader")
  ratio=$(awk -v c="$c_s" -v r="$r_s" 'BEGIN { printf "%.2f", (r > 0 ? c / r : 0) }')
  printf '%-14s %10s %10s %8s %12s %12s\n' "$reader" "$c_s" "$r_s" "$ratio" "$c_rss" "$r_rss"
done
