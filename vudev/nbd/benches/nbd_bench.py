#!/usr/bin/env python3
"""NBD servers: this project's vunbd vs `nbdkit file` vs qemu-nbd, nbdcopy of a 2 GiB image
(--size) out of the export (to null:) and into it (from a local file, --flush), over a Unix
socket and over loopback TCP; GiB/s; the server's peak RSS (VmHWM, read before it is stopped).
The export and the source file are on /dev/shm (tmpfs), so the figures are the servers'
and the transport's, not a disk's. nbdcopy runs with its defaults (4 connections when the
server advertises multi-conn, 64 requests in flight each); qemu-nbd gets -e 8 (it
advertises multi-conn only when it may serve more than one client). One server per
transport serves every copy of a run; runs interleaved (each server in turn).

--tls: every server requires TLS (vunbd --tls=require, nbdkit --tls=require, qemu-nbd
tls-creds-x509) with certificates that certtool makes in DIR/pki (CA, server for
localhost and 127.0.0.1, client: qemu-nbd checks client certificates), and nbdcopy
connects with nbds:// and nbds+unix:// URIs and tls-certificates=DIR/pki.

Usage: nbd_bench.py [--vunbd PATH] [--runs N] [--dir DIR] [--size GIB] [--tls]
"""

import argparse
import os
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


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vunbd", default=os.path.join(repo, "target/release/vunbd"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default="/dev/shm/nbd-bench")
    p.add_argument("--size", type=int, default=2, help="GiB per copy (default 2)")
    p.add_argument("--tls", action="store_true", help="every server requires TLS")
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
    print("\ntheir time / time of vunbd (>1: vunbd faster)\n")
    print("| vs | " + " | ".join(head) + " |")
    print("|---" * (len(figures) + 1) + "|")
    for name in list(servers)[1:]:
        cells = [f"{statistics.median(res[(name, f)]) / statistics.median(res[('vunbd', f)]):.2f}" for f in figures]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
