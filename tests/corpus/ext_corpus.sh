#!/usr/bin/env bash
# Mounts every corrupt image of e2fsprogs's test suite (tests/f_*/image.gz) with fuseext2,
# read-only and then read-write on a copy, and checks that the daemon never panics, never
# dies of a signal, never hangs, never changes an image it mounted read-only, and never
# leaves an image worse than e2fsck found it.
#
#   tests/corpus/ext_corpus.sh [-t SECONDS] [-n LIMIT] [-k] [NAME...]
#
# NAME... picks tests by directory name (f_zero_group ...); -n stops after LIMIT images;
# -t is the timeout of each walk, write and unmount step (default 60); -k keeps the work
# directory. Environment: E2FSPROGS, an e2fsprogs checkout or bare git directory (default
# /work/.mirror/tytso+e2fsprogs/repo, as the fetch tool leaves it); FUSEEXT2, the daemon
# (default $CARGO_TARGET_DIR/release/fuseext2). Needs e2fsck, fusermount3, timeout, sha256sum.
#
# Per image:
#   1. e2fsck -fn records the problem state: its exit status and its problem set, the lines
#      of its report with numbers and modification times replaced (pass headers, the summary
#      line and the bitmap-difference lists left out: those lists change shape with any
#      allocation).
#   2. read-only mount (fuseext2 -f, in the background): find -printf stats every name and
#      reads every symlink, cat reads every regular file; unmount; the image's sha256 must
#      not change. A refusal (exit status 1 with a message) is a pass.
#   3. read-write mount of a copy (-o rw+): the same walk, then a directory with files of
#      0 B, 1 KiB, 100 KiB and 3 MiB written with fsync, read back and compared, one renamed,
#      one deleted, a symlink; unmount. Errors of the operations (EIO, ENOSPC, EUCLEAN on a
#      corrupt image) are allowed; a refusal is a pass.
#   4. e2fsck -fn on the copy. "Not worse" means: an image e2fsck found clean (status 0) is
#      still clean; otherwise every problem kind of the new report was already in the old one
#      (problems of the same kind with other numbers are the same kind). An image e2fsck
#      could not check before (status 8 and up: it aborts) cannot be judged; it is counted.
# Formerly WORSE (2026-12-03, e2fsprogs a9f482e5): f_badtable, f_bitmaps, f_dup_ba and
# f_ind_inode_collision, whose bitmaps miss blocks or inodes in use (or whose bad-block list
# covers an inode table) with nothing marking the filesystem as having errors. A read-write
# mount now walks the inodes first (docs/EXT-ENGINE.md, "before a read-write mount") and
# refuses them; the CI subset (vufuse/tests/ext_corpus.rs) includes them.
# Verdicts: ok, CRASH (signal), PANIC (panicked in the log), HANG (a step timed out or the
# daemon outlived its unmount), RO-CHANGED, WORSE. The exit status is 1 if any image got a
# verdict other than ok. A summary table goes to stdout.
set -uo pipefail

timeout_s=60
limit=0
keep=0
while getopts "t:n:k" opt; do
  case $opt in
    t) timeout_s=$OPTARG ;;
    n) limit=$OPTARG ;;
    k) keep=1 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

src=${E2FSPROGS:-/work/.mirror/tytso+e2fsprogs/repo}
bin=${FUSEEXT2:-${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/release/fuseext2}
[ -x "$bin" ] || { echo "no fuseext2 at $bin (set FUSEEXT2)" >&2; exit 2; }
for tool in e2fsck fusermount3 timeout sha256sum; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

if [ -d "$src/tests" ]; then
  list() { (cd "$src" && ls tests/f_*/image.gz); }
  extract() { gunzip -c "$src/$1"; }
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  list() { git --git-dir="$src" ls-tree -r --name-only HEAD tests | grep -E '^tests/f_[^/]+/image\.gz$'; }
  extract() { git --git-dir="$src" show "HEAD:$1" | gunzip -c; }
else
  echo "no e2fsprogs tests at $src (set E2FSPROGS)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/ext_corpus.XXXXXX)
mnt=$work/mnt
# Mounted, by the mount table (stat of a mount whose root is broken fails with EIO).
mounted() { grep -q " $mnt fuse" /proc/self/mounts; }
cleanup() {
  mounted && umount -l "$mnt"
  if [ "$keep" = 1 ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# e2fsck -fn IMAGE > OUT.kinds; prints its exit status.
fsck_state() {
  local out
  # Under one name, so that the reports of the image and of its copy compare.
  ln -sf "$1" "$work/image"
  out=$(timeout "$timeout_s" e2fsck -fn "$work/image" 2>&1)
  local rc=$?
  printf '%s\n' "$out" | grep -vE '^(Pass [0-9]|e2fsck [0-9]|.*: [0-9]+/[0-9]+ files|\s*$)' \
    | grep -vE '^(Block|Inode) bitmap differences:' | grep -vE '^ *[-+]?\(?[0-9]' \
    | sed -E 's/mod time [^)]*/mod time T/; s/[0-9]+/N/g; s/[[:space:]]+/ /g; s/^ //; s/ $//' | sort -u > "$2"
  echo "$rc"
}

# mount_walk IMAGE MODE LOG: mounts, walks (and writes in rw), unmounts. Prints the outcome:
# refused, ok, CRASH, PANIC, HANG.
mount_walk() {
  local img=$1 mode=$2 log=$3 opts=() pid status hang=0
  [ "$mode" = rw ] && opts=(-o rw+)
  # A fresh mount point each time: nothing left over from the image before.
  mounted && umount -l "$mnt"
  rmdir "$mnt" 2>/dev/null
  mkdir -p "$mnt"
  "$bin" -f "${opts[@]}" "$img" "$mnt" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    mounted && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! mounted; then
    if timeout 10 tail --pid="$pid" -f /dev/null; then
      wait "$pid"; status=$?
    else
      kill -9 "$pid"; wait "$pid"; echo HANG; return
    fi
    if [ "$status" -ge 128 ]; then echo CRASH; elif grep -q panicked "$log"; then echo PANIC
    elif [ "$status" = 1 ]; then echo refused; else echo "CRASH"; fi
    return
  fi
  timeout -s KILL "$timeout_s" find "$mnt" -xdev -printf '%p %s %l\n' > /dev/null 2>>"$log" || [ $? != 137 ] || hang=1
  timeout -s KILL "$timeout_s" find "$mnt" -xdev -type f -exec cat {} + > /dev/null 2>>"$log" || [ $? != 137 ] || hang=1
  if [ "$mode" = rw ] && [ "$hang" = 0 ]; then
    timeout -s KILL "$timeout_s" bash -c '
      m=$1; d=$m/zz_corpus_probe
      head -c 3145728 /dev/urandom > "${TMPDIR:-/tmp}/probe.$$"
      mkdir "$d" || exit 0
      for size in 0 1024 102400 3145728; do
        head -c $size "${TMPDIR:-/tmp}/probe.$$" | dd of="$d/f$size" bs=64k conv=fsync status=none
        cmp -s <(head -c $size "${TMPDIR:-/tmp}/probe.$$") "$d/f$size" || echo "read-back differs: f$size" >&2
      done
      mv "$d/f1024" "$d/renamed"; rm -f "$d/f102400"; ln -s renamed "$d/link"; sync
      rm -f "${TMPDIR:-/tmp}/probe.$$"' _ "$mnt" 2>>"$log" || [ $? != 137 ] || hang=1
  fi
  timeout -s KILL "$timeout_s" fusermount3 -u "$mnt" 2>>"$log" || { umount -l "$mnt"; hang=1; }
  if timeout "$timeout_s" tail --pid="$pid" -f /dev/null; then
    wait "$pid"; status=$?
  else
    kill -9 "$pid"; wait "$pid"; hang=1; status=0
  fi
  mounted && umount -l "$mnt"
  if [ "$status" -ge 128 ]; then echo CRASH; elif grep -q panicked "$log"; then echo PANIC
  elif [ "$hang" = 1 ]; then echo HANG; else echo ok; fi
}

declare -A count=()
bad=0 n=0
printf '%-36s %-10s %-9s %-9s %-10s %s\n' image e2fsck-pre read-only rw e2fsck-post verdict
for path in $(list); do
  name=$(basename "$(dirname "$path")")
  if [ $# -gt 0 ]; then
    want=0; for w in "$@"; do [ "$w" = "$name" ] && want=1; done
    [ "$want" = 1 ] || continue
  fi
  [ "$limit" -gt 0 ] && [ "$n" -ge "$limit" ] && break
  n=$((n + 1))
  img=$work/$name.img
  extract "$path" > "$img" 2>/dev/null || { echo "$name: cannot extract" >&2; continue; }
  pre=$(fsck_state "$img" "$work/$name.pre")
  npre=$(wc -l < "$work/$name.pre")
  sum=$(sha256sum < "$img")
  ro=$(mount_walk "$img" ro "$work/$name.ro.log")
  verdict=ok
  [ "$(sha256sum < "$img")" = "$sum" ] || verdict=RO-CHANGED
  cp "$img" "$img.rw"
  rw=$(mount_walk "$img.rw" rw "$work/$name.rw.log")
  post=$(fsck_state "$img.rw" "$work/$name.post")
  npost=$(wc -l < "$work/$name.post")
  for r in "$ro" "$rw"; do
    case $r in CRASH|PANIC|HANG) verdict=$r ;; esac
  done
  if [ "$verdict" = ok ]; then
    if [ "$pre" -ge 8 ]; then
      verdict=unjudged
    elif [ "$pre" = 0 ] && [ "$post" != 0 ]; then
      verdict=WORSE
    elif [ "$pre" != 0 ] && [ -n "$(comm -13 "$work/$name.pre" "$work/$name.post")" ]; then
      verdict=WORSE
    fi
  fi
  if [ "$verdict" = WORSE ]; then
    comm -13 "$work/$name.pre" "$work/$name.post" | sed "s/^/    $name new: /" | head -5
  fi
  printf '%-36s %-10s %-9s %-9s %-10s %s\n' "$name" "$pre/$npre" "$ro" "$rw" "$post/$npost" "$verdict"
  count[$verdict]=$(( ${count[$verdict]:-0} + 1 ))
  count[ro-$ro]=$(( ${count[ro-$ro]:-0} + 1 ))
  count[rw-$rw]=$(( ${count[rw-$rw]:-0} + 1 ))
  case $verdict in ok|unjudged) ;; *) bad=$((bad + 1)) ;; esac
  rm -f "$img" "$img.rw"
done
echo "images: $n"
for k in $(printf '%s\n' "${!count[@]}" | sort); do echo "  $k: ${count[$k]}"; done
[ "$bad" = 0 ]
