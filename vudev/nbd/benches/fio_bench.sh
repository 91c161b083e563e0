#!/bin/sh
# fio 4 KiB random reads at queue depth 16 through fio's nbd engine (libnbd, one
# connection), against vunbd, nbdkit file and qemu-nbd serving the same raw image on
# /dev/shm over a Unix socket; 10 s per run, runs interleaved; prints IOPS per run and
# the median per server.
#   vudev/nbd/benches/fio_bench.sh [VUNBD] [RUNS]
set -e
VUNBD=${1:-target/release/vunbd}
RUNS=${2:-3}
D=/dev/shm/nbd-bench
IMG=$D/export.img
SOCK=$D/fio.sock
mkdir -p $D
[ -f $IMG ] || head -c $((2 << 30)) /dev/urandom > $IMG
fio --enghelp | grep -qw nbd || { echo "fio has no nbd engine"; exit 1; }
run() { # name, server argv...
    name=$1; shift
    rm -f $SOCK
    "$@" >/dev/null 2>&1 &
    pid=$!
    i=0; while [ ! -S $SOCK ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    # The socket file appears at bind(), before listen(): wait until it answers.
    i=0; while ! nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
    iops=$(fio --name=rr --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --rw=randread \
        --bs=4k --iodepth=16 --size=2G --runtime=10 --time_based --randrepeat=1 \
        --output-format=json | python3 -c 'import json,sys; t=sys.stdin.read(); print(int(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"]))') || iops=FAILED
    kill $pid; wait $pid 2>/dev/null || true
    echo "$name $iops"
}
for r in $(seq $RUNS); do
    run vunbd $VUNBD --unix $SOCK $IMG
    run nbdkit nbdkit -f -U $SOCK file $IMG
    run qemu-nbd qemu-nbd -f raw -e 8 -t -k $SOCK $IMG
done | tee /tmp/fio_bench.$$
echo
for s in vunbd nbdkit qemu-nbd; do
    grep "^$s " /tmp/fio_bench.$$ | awk '{print $2}' | sort -n | awk -v s=$s '{a[NR]=$1} END {print s, "median IOPS", a[int((NR+1)/2)]}'
done
rm -f /tmp/fio_bench.$$
