#!/bin/sh
# Builds every VUOS module crate under modules/ (each crate whose lib is a cdylib) in release
# mode and installs lib<name>.so as <name>.so where umvu looks for modules:
#   (default)       ~/.vu/modules            searched first, so it overrides the C modules
#   --prefix DIR    DIR/lib/vu/modules       e.g. --prefix /usr/local (replaces the C modules!)
#   --dest DIR      DIR                      any directory (e.g. a HOME used for benchmarks)
#   --debug         install the debug build instead (no cargo --release)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="${HOME:-.}/.vu/modules"
profile=release
while [ $# -gt 0 ]; do
	case "$1" in
	--user) dest="${HOME:-.}/.vu/modules" ;;
	--prefix) shift; dest="$1/lib/vu/modules" ;;
	--dest) shift; dest="$1" ;;
	--debug) profile=debug ;;
	-h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done

# package name and lib name of every cdylib crate in modules/
packages=""
libs=""
for toml in "$repo"/modules/*/Cargo.toml; do
	grep -q 'crate-type *= *\[[^]]*"cdylib"' "$toml" || continue
	package=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$toml" | head -n 1)
	lib=$(awk '/^\[lib\]/{inlib=1; next} /^\[/{inlib=0} inlib && /^name *=/{gsub(/.*= *"|".*/, ""); print; exit}' "$toml")
	[ -n "$lib" ] || lib=$(echo "$package" | tr - _)
	packages="$packages -p $package"
	libs="$libs $lib"
done
[ -n "$libs" ] || { echo "install.sh: no module crates found under $repo/modules" >&2; exit 1; }

cd "$repo"
if [ "$profile" = release ]; then
	# shellcheck disable=SC2086
	cargo build --release $packages
else
	# shellcheck disable=SC2086
	cargo build $packages
fi
target="${CARGO_TARGET_DIR:-$repo/target}/$profile"
mkdir -p "$dest"
for lib in $libs; do
	install -m 0755 "$target/lib$lib.so" "$dest/$lib.so"
	echo "installed $dest/$lib.so"
done
