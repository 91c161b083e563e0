#!/usr/bin/env python3
"""NBD servers: this project's vunbd vs `nbdkit file` vs qemu-nbd, nbdcopy of a 2 GiB image
(--size) out of the export (to null:) and into it (from a local file, --flush), over a Unix
socket and over loopback TCP; GiB/s; the server's peak RSS (VmHWM, read before it is stopped).
The export and the source file are on /dev/shm (tmpfs), so the figures are the servers'
and the transport's, not a disk's. nbdcopy runs with its defaults (4 connections when the
server advertises multi-conn, 64 requests in flight each); qemu-nbd gets -e 8 (it
advertises multi-conn only when it may serve more than one client). One server per
transport serves every copy of a run; runs interleaved (each server in turn).

Random 4 KiB reads at queue depth 16: fio's nbd engine (libnbd), 65,536 reads at seeded
offsets over the export (the "rand" columns, kIOPS).

fuseext2 over NBD (--tar TAR, default /dev/shm/include.tar when it exists): an ext4 image
served by vunbd and by nbdkit over the Unix socket, mounted by this project's fuseext2
through its NBD client (nbd+unix:// as IMAGE), TAR untarred into it (then sync -f), beside
the same untar into fuseext2 on the image file itself; e2fsck -fn of the image afterwards.

--tls: every server requires TLS (vunbd --tls=require, nbdkit --tls=require, qemu-nbd
tls-creds-x509) with certificates that certtool makes in DIR/pki (CA, server for
localhost and 127.0.0.1, client: qemu-nbd checks client certificates), and nbdcopy
connects with nbds:// and nbds+unix:// URIs and tls-certificates=DIR/pki.

Usage: nbd_bench.py [--vunbd PATH] [--fuseext2 PATH] [--tar TAR] [--runs N] [--dir DIR]
                    [--size GIB] [--tls]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

GIB = 1 << 30


def sh(cmd, check=True, timeout=None):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.returncode}: {r.stderr.strip()[-400:]}")
    return r


def make_certificates(pki):
    """nbdkit's layout: ca-cert.pem, server-cert.pem, server-key.pem (+ client-*.pem)."""
    if os.path.exists(f"{pki}/client-cert.pem"):
        return
    os.makedirs(pki, exist_ok=True)
    templates = {
        "ca": "cn = bench CA\nca\ncert_signing_key\nexpiration_days = 365\n",
        "server": "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n"
        "tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 365\n",
        "client": "cn = client\ntls_www_client\nencryption_key\nsigning_key\n"
        "expiration_days = 365\n",
    }
    for name, text in templates.items():
        with open(f"{pki}/{name}.info", "w") as f:
            f.write(text)
        sh(f"certtool --generate-privkey --outfile {pki}/{name}-key.pem")
    sh(f"certtool --generate-self-signed --load-privkey {pki}/ca-key.pem "
       f"--template {pki}/ca.info --outfile {pki}/ca-cert.pem")
    for name in ("server", "client"):
        sh(f"certtool --generate-certificate --load-ca-certificate {pki}/ca-cert.pem "
           f"--load-ca-privkey {pki}/ca-key.pem --load-privkey {pki}/{name}-key.pem "
           f"--template {pki}/{name}.info --outfile {pki}/{name}-cert.pem")


def vmhwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, argv, uri):
        self.uri = uri
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while sh(f"nbdinfo --size '{uri}'", check=False).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{argv[0]} did not serve {uri}: {self.proc.stderr.read().decode() if self.proc.poll() is not None else 'timeout'}")
            time.sleep(0.05)

    def stop(self):
        rss = vmhwm(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


# fio's nbd engine: 65,536 random 4 KiB reads, 16 in flight, the same offsets every run.
FIO_RAND = ("fio --name=rand --ioengine=nbd --uri='{uri}' --rw=randread --bs=4k --iodepth=16 "
            "--size={size} --io_size=256M --randrepeat=1 --randseed=1 --norandommap "
            "--output-format=json")


def rand_reads(uri, size):
    """Seconds and kIOPS of FIO_RAND against `uri`."""
    t = time.perf_counter()
    out = sh(FIO_RAND.format(uri=uri, size=size), timeout=300).stdout
    seconds = time.perf_counter() - t
    iops = json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]
    return seconds, iops / 1000


def untar_into(fuseext2, image, mnt, tar):
    """Seconds of an untar of `tar` into fuseext2 -o rw+ on `image` (a path or an NBD URI)."""
    proc = subprocess.Popen([fuseext2, "-f", "-o", "rw+", image, mnt], stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"fuseext2 {image} did not mount: {proc.stderr.read().decode()[-400:]}")
        time.sleep(0.02)
    try:
        t = time.perf_counter()
        sh(f"tar --no-same-owner -xf {tar} -C {mnt} && sync -f {mnt}", timeout=600)
        return time.perf_counter() - t
    finally:
        sh(f"fusermount3 -u {mnt}", check=False)
        proc.wait(timeout=60)


def fuseext2_over_nbd(args, d, servers_for, runs):
    """Untar through fuseext2 on the image file, over vunbd and over nbdkit (Unix socket)."""
    img = f"{d}/ext4.img"
    mnt = f"{d}/mnt"
    sock = f"{d}/ext.sock"
    uri = f"nbd+unix:///?socket={sock}"
    os.makedirs(mnt, exist_ok=True)
    res = {"file": [], "vunbd": [], "nbdkit file": []}
    for _ in range(runs):
        for name in res:
            sh(f"rm -f {img} && truncate -s 2G {img} && mkfs.ext4 -q -F {img}")
            if name == "file":
                res[name].append(untar_into(args.fuseext2, img, mnt, args.tar))
            else:
                if os.path.exists(sock):
                    os.unlink(sock)
                srv = Server(servers_for(name, sock, img), uri)
                try:
                    res[name].append(untar_into(args.fuseext2, uri, mnt, args.tar))
                finally:
                    srv.stop()
            fsck = sh(f"e2fsck -fn {img}", check=False)
            if fsck.returncode != 0:
                print(f"e2fsck after the untar through {name}: FAILED {fsck.stdout[-300:]}")
    print(f"\nfuseext2 untar of {args.tar}, seconds (min / median of {runs})\n")
    print("| fuseext2 on | untar | / on the file |")
    print("|---|---|---|")
    base = statistics.median(res["file"])
    for name, v in res.items():
        print(f"| {name} | {min(v):.3f} / {statistics.median(v):.3f} | {statistics.median(v) / base:.2f} |")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vunbd", default=os.path.join(repo, "target/release/vunbd"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default="/dev/shm/nbd-bench")
    p.add_argument("--size", type=int, default=2, help="GiB per copy (default 2)")
    p.add_argument("--tls", action="store_true", help="every server requires TLS")
    p.add_argument("--fuseext2", default=os.path.join(repo, "target/release/fuseext2"))
    p.add_argument("--tar", default="/dev/shm/include.tar")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    d = args.dir
    size = args.size * GIB
    src = f"{d}/src.img"
    exp = f"{d}/export.img"
    if not os.path.exists(src) or os.path.getsize(src) != size:
        sh(f"head -c {size} /dev/urandom > {src}")
    if not os.path.exists(exp) or os.path.getsize(exp) != size:
        sh(f"cp {src} {exp}")
    sock = f"{d}/nbd.sock"
    port = 10809
    vtls, ktls, qtls = [], [], []
    if args.tls:
        pki = f"{d}/pki"
        make_certificates(pki)
        unix_uri = f"nbds+unix:///?socket={sock}&tls-certificates={pki}"
        tcp_uri = f"nbds://localhost:{port}/?tls-certificates={pki}"
        vtls = ["--tls=require", "--tls-certificates", pki]
        ktls = ["--tls=require", "--tls-certificates", pki]
        qtls = ["--object", f"tls-creds-x509,id=tls0,dir={pki},endpoint=server", "--tls-creds", "tls0"]
    else:
        unix_uri = f"nbd+unix:///?socket={sock}"
        tcp_uri = f"nbd://127.0.0.1:{port}"
    servers = {
        "vunbd": {
            "unix": [args.vunbd, *vtls, "--unix", sock, exp],
            "tcp": [args.vunbd, *vtls, "--bind", f"127.0.0.1:{port}", exp],
        },
        "nbdkit file": {
            "unix": ["nbdkit", "-f", *ktls, "-U", sock, "file", exp],
            "tcp": ["nbdkit", "-f", *ktls, "-i", "127.0.0.1", "-p", str(port), "file", exp],
        },
        "qemu-nbd": {
            "unix": ["qemu-nbd", *qtls, "-f", "raw", "-e", "8", "-t", "-k", sock, exp],
            "tcp": ["qemu-nbd", *qtls, "-f", "raw", "-e", "8", "-t", "-b", "127.0.0.1", "-p", str(port), exp],
        },
    }
    figures = [("unix", "out"), ("unix", "in"), ("tcp", "out"), ("tcp", "in")]
    with_fio = shutil.which("fio") is not None
    if not with_fio:
        print("note: no fio: no random 4 KiB read figures")
    kiops = {(s, t): [] for s in servers for t in ("unix", "tcp")}
    res = {(s, f): [] for s in servers for f in figures}
    rss = {s: 0 for s in servers}
    conns = {}
    for _ in range(args.runs):
        for name, argv in servers.items():
            for transport in ("unix", "tcp"):
                if os.path.exists(sock):
                    os.unlink(sock)
                uri = unix_uri if transport == "unix" else tcp_uri
                srv = Server(argv[transport], uri)
                if (name, transport) not in conns:
                    info = sh(f"nbdinfo '{uri}'").stdout
                    conns[(name, transport)] = "multi-conn" if "can_multi_conn: true" in info else "single conn"
                for direction in ("out", "in"):
                    cmd = f"nbdcopy '{uri}' null:" if direction == "out" else f"nbdcopy --flush {src} '{uri}'"
                    t = time.perf_counter()
                    sh(cmd, timeout=300)
                    res[(name, (transport, direction))].append(time.perf_counter() - t)
                if with_fio:
                    kiops[(name, transport)].append(rand_reads(uri, size)[1])
                rss[name] = max(rss[name], srv.stop())
    cmp = sh(f"cmp {src} {exp}", check=False)
    print(f"export after the copies in: {'identical to the source' if cmp.returncode == 0 else 'DIFFERS: ' + cmp.stdout}")
    what = "over TLS, " if args.tls else ""
    print(f"\nGiB/s (median of {args.runs}, {what}{args.size} GiB per copy); seconds min / median in brackets\n")
    head = [f"{t} {'out of' if dr == 'out' else 'into'}" for t, dr in figures]
    print("| server | " + " | ".join(head) + " | peak RSS | multi-conn (unix / tcp) |")
    print("|---" * (len(figures) + 3) + "|")
    for name in servers:
        cells = []
        for f in figures:
            v = res[(name, f)]
            m = statistics.median(v)
            cells.append(f"{args.size / m:.2f} ({min(v):.3f} / {m:.3f})")
        mc = f"{conns[(name, 'unix')]} / {conns[(name, 'tcp')]}"
        print(f"| {name} | " + " | ".join(cells) + f" | {rss[name] / 1024:.1f} MiB | {mc} |")
    if with_fio:
        print("\nrandom 4 KiB reads, queue depth 16 (fio nbd engine), kIOPS, median of "
              f"{args.runs} (min / max)\n")
        print("| server | unix | tcp |")
        print("|---|---|---|")
        for name in servers:
            cells = [f"{statistics.median(kiops[(name, t)]):.1f} ({min(kiops[(name, t)]):.1f} / "
                     f"{max(kiops[(name, t)]):.1f})" for t in ("unix", "tcp")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\ntheir time / time of vunbd (>1: vunbd faster)\n")
    print("| vs | " + " | ".join(head) + " |")
    print("|---" * (len(figures) + 1) + "|")
    for name in list(servers)[1:]:
        cells = [f"{statistics.median(res[(name, f)]) / statistics.median(res[('vunbd', f)]):.2f}" for f in figures]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if with_fio:
        cells = [f"{statistics.median(kiops[('vunbd', t)]) / statistics.median(kiops[(name, t)]):.2f}"
                 for name in list(servers)[1:] for t in ("unix", "tcp")]
        print("\nrandom 4 KiB reads, vunbd kIOPS / theirs: " + ", ".join(
            f"{name} {t} {c}" for (name, t), c in zip([(n, t) for n in list(servers)[1:] for t in ("unix", "tcp")], cells)))
    if not args.tls and os.path.exists(args.tar) and os.path.exists(args.fuseext2):
        def servers_for(name, sock, img):
            if name == "vunbd":
                return [args.vunbd, "--unix", sock, img]
            return ["nbdkit", "-f", "-U", sock, "file", img]
        fuseext2_over_nbd(args, d, servers_for, args.runs)
    elif not args.tls:
        print(f"note: no {args.tar} or no {args.fuseext2}: no fuseext2-over-NBD figure")


if __name__ == "__main__":
    main()
