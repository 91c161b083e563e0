#!/bin/bash
# Times the Rust VUOS modules against the C modules of the same names, side by side in one
# run, under the real umvu. Needs umvu, vu_insmod, vumount on PATH and the C modules in
# <libdir>/vu/modules. The Rust modules are installed into a private HOME (--dest) so that
# HOME=$rust_home picks them and HOME=$c_home (no .vu/modules) picks the C ones.
#
#   modules/vuhost/bench/vuos_bench.sh [--reps N] [--work DIR] [--no-build]
#
# Workloads: dd 200 MiB from /dev/hda1 (vudevpartx) with bs=1M and bs=4k; cat of a 100 MiB
# file through vufusefatfs (when a Rust vufusefatfs.so is installed too); cp -a of a
# 1,000-file tree into a vufs cow view. Prints min-of-N seconds, the ratio Rust/C and the
# peak RSS of the umvu process (/usr/bin/time -v, maximum over the run).
set -euo pipefail
reps=3
work=/tmp/vuos-bench
build=1
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) shift; reps=$1 ;;
	--work) shift; work=$1 ;;
	--no-build) build=0 ;;
	*) echo "usage: $0 [--reps N] [--work DIR] [--no-build]" >&2; exit 2 ;;
	esac
	shift
done
repo=$(cd "$(dirname "$0")/../../.." && pwd)
command -v umvu >/dev/null || { echo "skipped: umvu not installed" >&2; exit 0; }

rust_home=$work/rust-home
c_home=$work/c-home
mkdir -p "$work" "$c_home" "$rust_home/.vu/modules"
if [ "$build" = 1 ]; then
	"$repo/modules/install.sh" --dest "$rust_home/.vu/modules" >/dev/null
fi

# Fixtures: a GPT image with a 300 MiB partition holding 200 MiB of data; a FAT image with a
# 100 MiB file; a 1,000-file tree.
img=$work/disk.img
if [ ! -f "$img" ]; then
	truncate -s 400M "$img"
	sgdisk -n 1:2048:+300M -t 1:8300 "$img" >/dev/null
	dd if=/dev/urandom of="$img" bs=1M seek=1 count=200 conv=notrunc status=none
fi
fat=$work/fat.img
if [ ! -f "$fat" ]; then
	truncate -s 160M "$fat" && mkfs.vfat -F 32 "$fat" >/dev/null
	dd if=/dev/urandom of="$work/big" bs=1M count=100 status=none
	mcopy -i "$fat" "$work/big" ::/big && rm "$work/big"
fi
tree=$work/tree
if [ ! -d "$tree" ]; then
	for d in $(seq -w 0 9); do
		mkdir -p "$tree/d$d"
		for f in $(seq -w 0 99); do head -c $((512 + 37 * 10#$f)) /dev/urandom >"$tree/d$d/f$f"; done
	done
fi
cat "$img" "$fat" >/dev/null; find "$tree" -type f -exec cat {} + >/dev/null   # warm cache

# run_umvu HOME SCRIPT -> prints "seconds maxrss_kib" (the script prints its own seconds)
run_umvu() {
	local home=$1 script=$2 out
	out=$(cd "$work" && HOME=$home /usr/bin/time -v timeout -s KILL 600 umvu bash -c "$script" 2>"$work/time.log") || {
		echo "umvu run failed:" >&2; cat "$work/time.log" >&2; return 1; }
	local rss
	rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.log")
	echo "$out $rss"
}

timed() { # shell snippet that prints the seconds taken by "$@"
	echo "s=\$(date +%s.%N); $*; e=\$(date +%s.%N); echo \"\$e - \$s\" | bc -l"
}

declare -A best rss
measure() { # name impl home script: one run, keeping the minimum time and the peak RSS
	local name=$1 impl=$2 home=$3 script=$4 t m
	read -r t m < <(run_umvu "$home" "$script")
	if [ -z "${best[$name/$impl]:-}" ] || [ "$(echo "$t < ${best[$name/$impl]}" | bc -l)" = 1 ]; then
		best[$name/$impl]=$t
	fi
	if [ -z "${rss[$name/$impl]:-}" ] || [ "$m" -gt "${rss[$name/$impl]}" ]; then
		rss[$name/$impl]=$m
	fi
}

partx_prelude="vu_insmod vudev; vumount -t vudevpartx $img /dev/hda"
dd1m="$partx_prelude; $(timed dd if=/dev/hda1 of=/dev/null bs=1M count=200 status=none)"
dd4k="$partx_prelude; $(timed dd if=/dev/hda1 of=/dev/null bs=4k count=51200 status=none)"
cpa="rm -rf $work/lower $work/layer; mkdir -p $work/lower $work/layer; vu_insmod vufs; \
vumount -t vufs -o cow $work/layer $work/lower; $(timed cp -a $tree $work/lower/copy); \
test \$(find $work/lower/copy -type f | wc -l) = 1000"
fatcat="mkdir -p $work/mnt; vu_insmod vufuse; vumount -t vufusefatfs $fat $work/mnt; \
$(timed cat $work/mnt/big '>/dev/null')"

# C and Rust alternate within each repetition, so a load change on a shared machine hits
# both alike; min-of-N is reported.
for r in $(seq "$reps"); do
	for impl in c rust; do
		home=$c_home; [ "$impl" = rust ] && home=$rust_home
		measure "dd bs=1M 200MiB /dev/hda1" $impl "$home" "$dd1m"
		measure "dd bs=4k 200MiB /dev/hda1" $impl "$home" "$dd4k"
		measure "cp -a 1000 files into vufs cow" $impl "$home" "$cpa"
		if [ -f "$rust_home/.vu/modules/vufusefatfs.so" ]; then
			measure "cat 100MiB via vufusefatfs" $impl "$home" "$fatcat"
		fi
	done
done

printf '%-34s %10s %10s %8s %12s %12s\n' workload "C s" "Rust s" "Rust/C" "C RSS KiB" "Rust RSS KiB"
for name in "dd bs=1M 200MiB /dev/hda1" "dd bs=4k 200MiB /dev/hda1" "cat 100MiB via vufusefatfs" "cp -a 1000 files into vufs cow"; do
	[ -n "${best[$name/c]:-}" ] || { printf '%-34s %s\n' "$name" "skipped (no Rust module installed)"; continue; }
	c=${best[$name/c]}; rs=${best[$name/rust]}
	printf '%-34s %10.3f %10.3f %8.2f %12s %12s\n' "$name" "$c" "$rs" "$(echo "$rs / $c" | bc -l)" "${rss[$name/c]}" "${rss[$name/rust]}"
done
