#!/usr/bin/env bash
# Crash safety: the daemon is killed with SIGKILL at a random (seeded) moment of a
# create / write+fsync / rename+directory fsync / overwrite / delete loop; then the image
# is checked by the format's own fsck in no-change mode and every file whose last change
# was made durable (fsync returned) is read back through a neutral reader and compared.
#
#   tests/crash/kill9.sh [-n TRIALS] [-s SEED] [DRIVER...]     DRIVER: ext4 fat32 exfat
#
# Defaults: 20 trials, seed 1, all three drivers. Environment: FUSEEXT2, FUSEFATFS (the
# daemons; default $CARGO_TARGET_DIR/release/...). Needs mke2fs, e2fsck, debugfs, mkfs.fat,
# fsck.fat, mtools, mkfs.exfat, fsck.exfat, mount.exfat-fuse.
#
# What counts as clean after kill -9 (none of these drivers has a journal; each writes an
# operation's metadata when the operation ends, so a kill inside that write-back can leave
# part of it):
#   ext4 (e2fsck -fn): status 0, or only leaks e2fsck -p fixes without losing data: blocks or
#     inodes marked in use that nothing uses ("bitmap differences" with '-' entries only) and
#     the free/directory counts of the summary; or ("preened") a state e2fsck -p repairs on
#     its own, after which -fn is clean: an entry naming an unused inode or a link count off
#     by one (an entry and its inode are two writes; docs/EXT-ENGINE.md). A '+' bitmap entry
#     (in use but not marked: could be handed out twice) or anything else fails the trial.
#   FAT32 (fsck.fat -n): status 0, or only lost clusters (allocated, in no chain) and the
#     free-cluster count of FSInfo; anything else fails.
#   exFAT (fsck.exfat -n): status 0, or only clusters marked in the bitmap that no file uses;
#     anything else fails.
# Durable files: each has its content recorded on the host after fsync (and after the
# directory's fsync for a rename); a file whose later change (rename, overwrite, delete)
# had begun may hold either state, and is checked against both.
# Readers: debugfs -R dump (ext4), mcopy (FAT32), exfat-fuse mounted read-only from a
# read-only loop device (exFAT; without losetup, fusefatfs read-only after fsck.exfat).
set -uo pipefail

trials=20
seed=1
while getopts "n:s:" opt; do
  case $opt in
    n) trials=$OPTARG ;;
    s) seed=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
drivers=("$@")
[ ${#drivers[@]} -gt 0 ] || drivers=(ext4 fat32 exfat)
target=${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/release
fuseext2=${FUSEEXT2:-$target/fuseext2}
fusefatfs=${FUSEFATFS:-$target/fusefatfs}
for b in "$fuseext2" "$fusefatfs"; do [ -x "$b" ] || { echo "no daemon at $b (set FUSEEXT2, FUSEFATFS)" >&2; exit 2; }; done

work=$(mktemp -d /tmp/kill9.XXXXXX)
mnt=$work/mnt
ro=$work/ro
mkdir -p "$mnt" "$ro"
mounted() { grep -q " $1 fuse" /proc/self/mounts; }
cleanup() {
  mounted "$mnt" && umount -l "$mnt"
  mounted "$ro" && umount -l "$ro"
  rm -rf "$work"
}
trap cleanup EXIT
export MTOOLS_SKIP_CHECK=1

# The workload; appends "durable NAME SHA" (or "gone NAME", "begin NAME") to $work/ops.
workload() {
  local m=$1 i=0 size
  RANDOM=$2
  while :; do
    i=$((i + 1))
    size=$(( (RANDOM * 7) % 300000 ))
    head -c "$size" /dev/urandom > "$work/src"
    sum=$(sha256sum < "$work/src" | cut -c1-64)
    echo "begin t$i" >> "$work/ops"
    dd if="$work/src" of="$m/t$i" bs=64k conv=fsync status=none || return
    echo "durable t$i $sum" >> "$work/ops"
    echo "begin t$i f$i" >> "$work/ops"
    mv "$m/t$i" "$m/f$i" && sync "$m" || return
    echo "gone t$i" >> "$work/ops"
    echo "durable f$i $sum" >> "$work/ops"
    if [ $((i % 3)) = 0 ] && [ "$i" -gt 3 ]; then
      # Overwrite an older file in place (truncating), then delete another.
      j=$((i - 2))
      head -c $((size / 2 + 1)) /dev/urandom > "$work/src"
      sum=$(sha256sum < "$work/src" | cut -c1-64)
      echo "begin f$j" >> "$work/ops"
      dd if="$work/src" of="$m/f$j" bs=64k conv=fsync status=none || return
      echo "durable f$j $sum" >> "$work/ops"
      echo "begin f$((i - 3))" >> "$work/ops"
      rm "$m/f$((i - 3))" && sync "$m" || return
      echo "gone f$((i - 3))" >> "$work/ops"
    fi
  done
}

# Prints "NAME SHA|-" for each name, the set of states allowed: the last durable state, and
# while a later change had begun, also anything that change may have left ("?").
expectations() {
  awk '
    $1 == "durable" { state[$2] = $3; open_[$2] = 0; seen[$2] = 1 }
    $1 == "gone"    { state[$2] = "-"; open_[$2] = 0; seen[$2] = 1 }
    $1 == "begin"   { for (k = 2; k <= NF; k++) { open_[$k] = 1; seen[$k] = 1 } }
    END { for (n in seen) print n, (n in state ? state[n] : "-"), open_[n] }' "$work/ops"
}

# read_file DRIVER IMAGE NAME: the file's sha256, or "-" if it is not there.
read_file() {
  local out=$work/read
  rm -f "$out"
  case $1 in
    ext4) debugfs -R "dump /$3 $out" "$2" >/dev/null 2>&1 ;;
    fat32) mcopy -n -i "$2" "::/$3" "$out" >/dev/null 2>&1 ;;
    exfat) [ -e "$ro/$3" ] && cp "$ro/$3" "$out" ;;
  esac
  if [ -e "$out" ]; then sha256sum < "$out" | cut -c1-64; else echo -; fi
}

# fsck_verdict DRIVER IMAGE: "clean", "leaks", "preened" (acceptable, see above) or "BAD: ...".
fsck_verdict() {
  local out rc
  case $1 in
    ext4)
      out=$(e2fsck -fn "$2" 2>&1); rc=$?
      [ "$rc" = 0 ] && { echo clean; return; }
      other=$(printf '%s\n' "$out" | grep -vE '^(Pass [0-9]|e2fsck [0-9]|.*: [0-9]+/[0-9]+ files|\s*$)' \
        | grep -vE '^Free (blocks|inodes) count wrong|^Directories count wrong|^Fix\? no|^\*+ WARNING: Filesystem still has errors|Filesystem still has errors' \
        | grep -vE '^ ?Block bitmap differences:|^ ?Inode bitmap differences:')
      plus=$(printf '%s\n' "$out" | grep -E 'bitmap differences:' | grep -E '\+' )
      if [ -z "$other" ] && [ -z "$plus" ]; then echo leaks; return; fi
      if [ -z "$plus" ]; then
        # An entry and its inode are two writes: what e2fsck -p repairs alone is fine.
        cp "$2" "$work/preen.img"
        e2fsck -p "$work/preen.img" >/dev/null 2>&1; prc=$?
        if [ "$prc" -le 1 ] && e2fsck -fn "$work/preen.img" >/dev/null 2>&1; then echo preened; return; fi
      fi
      echo "BAD: $(printf '%s %s' "$other" "$plus" | tr '\n' ' ' | cut -c1-200)" ;;
    fat32)
      out=$(fsck.fat -n "$2" 2>&1); rc=$?
      [ "$rc" = 0 ] && ! printf '%s\n' "$out" | grep -qiE 'lost|wrong|differ|free cluster' && { echo clean; return; }
      other=$(printf '%s\n' "$out" | grep -vE '^fsck\.fat [0-9]|^There are differences between boot sector|^\s*$|^[^ ]+: [0-9]+ files, [0-9]+/[0-9]+ clusters|^Leaving filesystem unchanged|^Checking|^Starting check' \
        | grep -viE 'lost cluster|Reclaim|Free cluster summary|free clusters|Leave filesystem|\? no|^ *[0-9]+ lost|Dirty bit|FSINFO|Perform changes')
      if [ -z "$other" ]; then echo leaks; else echo "BAD: $(printf '%s' "$other" | tr '\n' ' ' | cut -c1-200)"; fi ;;
    exfat)
      out=$(fsck.exfat -n "$2" 2>&1); rc=$?
      [ "$rc" = 0 ] && { echo clean; return; }
      other=$(printf '%s\n' "$out" | grep -vE '^exfatprogs version|^\s*$|^[^ ]+: (clean|checking stopped|corrupted)\.|directories [0-9]+, files [0-9]+|ERROR: bitmap|^Fix \(y/N\)\? n|cluster is marked allocated|^found' \
        | grep -viE 'marked as allocated|not allocated but|bitmap' )
      if [ -z "$other" ]; then echo leaks; else echo "BAD: $(printf '%s' "$other" | tr '\n' ' ' | cut -c1-200)"; fi ;;
  esac
}

failures=0
declare -A tally=()
RANDOM=$seed
for driver in "${drivers[@]}"; do
  for t in $(seq 1 "$trials"); do
    img=$work/$driver.img
    rm -f "$img" "$work/ops"
    touch "$work/ops"
    case $driver in
      ext4) truncate -s 32M "$img"; mke2fs -q -F -t ext4 "$img"; bin=$fuseext2 ;;
      fat32) truncate -s 64M "$img"; mkfs.fat -F 32 "$img" >/dev/null; bin=$fusefatfs ;;
      exfat) truncate -s 32M "$img"; mkfs.exfat "$img" >/dev/null; bin=$fusefatfs ;;
      *) echo "unknown driver $driver" >&2; exit 2 ;;
    esac
    delay_ms=$(( RANDOM % 3000 + 50 ))
    wseed=$RANDOM
    "$bin" -f -o rw+ "$img" "$mnt" > "$work/daemon.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do mounted "$mnt" && break; sleep 0.1; done
    if ! mounted "$mnt"; then
      echo "$driver trial $t: did not mount: $(cat "$work/daemon.log")"; failures=$((failures + 1)); kill -9 $pid; wait $pid; continue
    fi
    workload "$mnt" "$wseed" 2>/dev/null &
    wpid=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    wait "$wpid" 2>/dev/null
    umount -l "$mnt" 2>/dev/null
    ops=$(grep -c '^durable' "$work/ops")
    verdict=$(fsck_verdict "$driver" "$img")
    if [ "$driver" = exfat ]; then
      # exfat-fuse wants a block device: a read-only loop device, else our own read-only mount.
      loop=$(losetup -r -f --show "$img" 2>/dev/null) && mount.exfat-fuse -o ro "$loop" "$ro" >/dev/null 2>&1 \
        || { [ -n "${loop:-}" ] && losetup -d "$loop"; loop=; "$fusefatfs" "$img" "$ro"; }
    fi
    lost=0 checked=0
    while read -r name want open_; do
      got=$(read_file "$driver" "$img" "$name")
      checked=$((checked + 1))
      [ "$got" = "$want" ] && continue
      [ "$open_" = 1 ] && continue   # a change had begun: its end state is not promised
      lost=$((lost + 1))
      echo "    $driver trial $t: $name is $got, fsynced as $want"
    done < <(expectations)
    if [ "$driver" = exfat ]; then
      fusermount -u "$ro" 2>/dev/null || fusermount3 -u "$ro" 2>/dev/null || umount -l "$ro"
      [ -n "${loop:-}" ] && { sleep 0.2; losetup -d "$loop"; }
    fi
    status=ok
    case $verdict in BAD*) status=FAIL ;; esac
    [ "$lost" = 0 ] || status=FAIL
    [ "$status" = ok ] || failures=$((failures + 1))
    tally[$driver-$status]=$(( ${tally[$driver-$status]:-0} + 1 ))
    tally[$driver-fsck-${verdict%%:*}]=$(( ${tally[$driver-fsck-${verdict%%:*}]:-0} + 1 ))
    printf '%-6s trial %2d: killed after %4d ms, %3d durable steps, %3d names checked, lost %d, fsck %s -> %s\n' \
      "$driver" "$t" "$delay_ms" "$ops" "$checked" "$lost" "$verdict" "$status"
  done
done
echo "summary:"
for k in $(printf '%s\n' "${!tally[@]}" | sort); do echo "  $k: ${tally[$k]}"; done
[ "$failures" = 0 ]
