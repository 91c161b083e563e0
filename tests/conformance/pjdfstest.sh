#!/usr/bin/env bash
# pjdfstest against every daemon of this project (and the kernel, for reference), as root,
# each in a fresh mount; prints one table of failed test files and checks it against the
# known failures (tests/conformance/pjdfstest-known.txt), which may only shrink.
#
#   tests/conformance/pjdfstest.sh PJDFSTEST_DIR [CONFIG...]
#
# PJDFSTEST_DIR is a built checkout of github.com/pjd/pjdfstest (its `pjdfstest` binary and
# tests/ beside it; built outside this repository). CONFIGs (default: all):
#   kernel-ext4      ext4 on a loop device (the reference: 0 failures)
#   fuseext2-dp      fuseext2 -o rw+,allow_other,default_permissions
#   fuseext2         fuseext2 -o rw+,allow_other (no default_permissions asked for)
#   vufs-bind vufs-merge vufs-cow vufs-mincow   vufs -o MODE,allow_other over a fresh tree
#   fusefatfs        fusefatfs -o rw+,allow_other (FAT: no owners, links or modes)
#   CONFIG-dp        any of the daemons above with default_permissions added (fuseext2-dp
#                    is the kernel-checks twin of fuseext2)
# PJD_TESTS="open chmod ..." runs only those test directories (all by default).
# Binaries come from target/release (built here with cargo build --release). Exit status:
# 0 when no configuration fails a file outside its known list, 1 otherwise, 2 on usage.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
[ $# -ge 1 ] || { sed -n 2,16p "$0"; exit 2; }
pjd=$(cd "$1" && pwd) || exit 2
shift
[ -x "$pjd/pjdfstest" ] && [ -d "$pjd/tests" ] || { echo "no built pjdfstest in $pjd" >&2; exit 2; }
command -v prove >/dev/null || { echo "prove (perl) is needed" >&2; exit 2; }
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(kernel-ext4 fuseext2-dp fuseext2 vufs-bind vufs-bind-dp vufs-merge vufs-merge-dp
  vufs-cow vufs-cow-dp vufs-mincow vufs-mincow-dp fusefatfs fusefatfs-dp)
known=$repo/tests/conformance/pjdfstest-known.txt
cargo build --release -q -p vufuse -p vufs-fuse --bin fuseext2 --bin fusefatfs --bin vufs || exit 1
bin=$repo/target/release
work=$(mktemp -d /tmp/pjdfstest.XXXXXX)
chmod 755 "$work"
trap 'umount -l "$work"/m* 2>/dev/null; rm -rf "$work"' EXIT

# Mounts CONFIG at $work/m.$CONFIG; prints the mount point.
mount_config() {
  local c=$1 m=$work/m.$1 img=$work/$1.img dp=
  case $c in *-dp) dp=,default_permissions; c=${c%-dp} ;; esac
  mkdir -p "$m"
  case $c in
    kernel-ext4) truncate -s 1G "$img"; mkfs.ext4 -q "$img"; mount -o loop "$img" "$m" ;;
    fuseext2)    truncate -s 1G "$img"; mkfs.ext4 -q "$img"
                 "$bin/fuseext2" -o "rw+,allow_other$dp" "$img" "$m" ;;
    vufs-bind|vufs-merge|vufs-cow|vufs-mincow)
                 mkdir -p "$work/layer.$1"; chmod 755 "$work/layer.$1"
                 "$bin/vufs" -o "${c#vufs-},allow_other$dp" "$work/layer.$1" "$m" ;;
    fusefatfs)   truncate -s 1G "$img"; mkfs.fat -F 32 "$img" >/dev/null
                 "$bin/fusefatfs" -o "rw+,allow_other$dp" "$img" "$m" ;;
    *) echo "unknown configuration $c" >&2; return 1 ;;
  esac || return 1
  echo "$m"
}

# Failed test files of one prove run, one per line (chmod/00.t ...): those the summary lists
# with failed tests or a non-zero wait status ("TODO passed" alone is not a failure).
failed_files() {
  awk 'match($0, /\/tests\/[a-z_]+\/[0-9]+\.t/) && /Wstat:/ {
         name = substr($0, RSTART + 7, RLENGTH - 7)
         wstat = $0; sub(/.*Wstat: /, "", wstat); sub(/ .*/, "", wstat)
         failed = $0; sub(/.*Failed: /, "", failed); sub(/\).*/, "", failed)
         if (wstat != 0 || failed + 0 > 0) print name
       }' "$1" | sort -u
}

status=0
printf '%-14s %8s %8s  %s\n' configuration failed known "new failures (not in the known list)"
for c in "${configs[@]}"; do
  m=$(mount_config "$c") || { printf '%-14s %8s\n' "$c" "no mount"; status=1; continue; }
  log=$work/$c.log
  dirs=()
  for t in ${PJD_TESTS:-}; do dirs+=("$pjd/tests/$t"); done
  [ ${#dirs[@]} -gt 0 ] || dirs=("$pjd/tests")
  (cd "$m" && timeout 3600 prove -r "${dirs[@]}" > "$log" 2>&1)
  umount "$m" 2>/dev/null || umount -l "$m"
  failed_files "$log" > "$work/$c.failed"
  # A -dp configuration may fail what its base fails (FAT's missing owners, say) and what
  # is listed for it alone; only the latter can be reported as passing now.
  grep "^$c " "$known" 2>/dev/null | awk '{print $2}' | sort -u > "$work/$c.own"
  if [ -n "${PJD_TESTS:-}" ]; then
    # A subset run: only the listed files of the directories that ran can pass now.
    pattern="^($(echo "$PJD_TESTS" | tr ' ' '|'))/"
    grep -E "$pattern" "$work/$c.own" > "$work/$c.own.ran" || true
    mv "$work/$c.own.ran" "$work/$c.own"
  fi
  grep -E "^($c|${c%-dp}) " "$known" 2>/dev/null | awk '{print $2}' | sort -u > "$work/$c.known"
  new=$(comm -23 "$work/$c.failed" "$work/$c.known" | tr '\n' ' ')
  fixed=$(comm -13 "$work/$c.failed" "$work/$c.own" | tr '\n' ' ')
  printf '%-14s %8d %8d  %s\n' "$c" "$(wc -l < "$work/$c.failed")" "$(wc -l < "$work/$c.known")" "${new:--}"
  [ -z "$fixed" ] || echo "               now passing (remove from the known list): $fixed"
  [ -z "$new" ] || status=1
  cp "$log" "/tmp/pjdfstest-$c.log"
done
echo "logs: /tmp/pjdfstest-CONFIG.log"
exit $status
