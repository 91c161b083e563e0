//! TLS (NBD_OPT_STARTTLS) against real peers: nbdinfo and nbdcopy (libnbd, gnutls) against
//! vunbd, and our client against nbdkit and qemu-nbd. Certificates are made with certtool,
//! as nbdkit's documentation does.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testkit::{run, run_ok, s};
use vudev::BlockDevice;
use vudev_nbd::proto::*;
use vudev_nbd::NbdDevice;

/// Writes `template` and runs certtool with `args` plus `--template`, output to `out`.
fn certtool(dir: &Path, template: &str, args: &[&str], out: &str) {
    let t = dir.join(format!("{out}.info"));
    std::fs::write(&t, template).unwrap();
    let status = Command::new("certtool")
        .args(args)
        .arg("--template")
        .arg(&t)
        .arg("--outfile")
        .arg(dir.join(out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "certtool {args:?}");
}

fn private_key(path: &Path) {
    let out = Command::new("certtool")
        .args(["--generate-privkey", "--outfile"])
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success(), "certtool --generate-privkey");
}

/// A directory as nbdkit, qemu-nbd and libnbd read it: ca-cert.pem, server-cert.pem,
/// server-key.pem (for localhost and 127.0.0.1), client-cert.pem, client-key.pem.
fn make_certificates(dir: &Path, ca_name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    private_key(&dir.join("ca-key.pem"));
    certtool(
        dir,
        &format!("cn = {ca_name}\nca\ncert_signing_key\nexpiration_days = 3650\n"),
        &[
            "--generate-self-signed",
            "--load-privkey",
            s(&dir.join("ca-key.pem")),
        ],
        "ca-cert.pem",
    );
    let sign = |key: &str, template: &str, out: &str| {
        private_key(&dir.join(key));
        certtool(
            dir,
            template,
            &[
                "--generate-certificate",
                "--load-ca-certificate",
                s(&dir.join("ca-cert.pem")),
                "--load-ca-privkey",
                s(&dir.join("ca-key.pem")),
                "--load-privkey",
                s(&dir.join(key)),
            ],
            out,
        );
    };
    sign(
        "server-key.pem",
        "organization = vurs test\ncn = localhost\ndns_name = localhost\n\
         ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n\
         expiration_days = 3650\n",
        "server-cert.pem",
    );
    sign(
        "client-key.pem",
        "organization = vurs test\ncn = client\ntls_www_client\nencryption_key\n\
         signing_key\nexpiration_days = 3650\n",
        "client-cert.pem",
    );
}

/// The certificates of this test run: (the directory, one with only ca-cert.pem, one
/// of another CA), made once; None (skipped) without certtool.
fn certificates() -> Option<&'static (PathBuf, PathBuf, PathBuf)> {
    static DIRS: OnceLock<Option<(PathBuf, PathBuf, PathBuf)>> = OnceLock::new();
    DIRS.get_or_init(|| {
        if !have("certtool") {
            return None;
        }
        // Under the target directory (a test's tempdir would go with the test).
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nbd-tls-pki");
        let _ = std::fs::remove_dir_all(&root);
        let good = root.join("pki");
        make_certificates(&good, "vurs test CA");
        let ca_only = root.join("ca-only");
        std::fs::create_dir_all(&ca_only).unwrap();
        std::fs::copy(good.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
        let other = root.join("other");
        make_certificates(&other, "another CA");
        Some((good, ca_only, other))
    })
    .as_ref()
}

fn tls_uri(socket: &Path, name: &str, certs: &Path) -> String {
    format!(
        "nbds+unix:///{name}?socket={}&tls-certificates={}",
        socket.display(),
        certs.display()
    )
}

fn export_size(json: &str) -> u64 {
    let info: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(info["TLS"], true, "{json}");
    info["exports"][0]["export-size"].as_u64().unwrap()
}

#[test]
fn nbdinfo_over_tls_reports_the_size_and_plaintext_still_works_with_tls_on() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("nbdinfo") {
        return;
    }
    let (_v, port) = vunbd_tcp(&[
        "--ramdisk",
        "5M",
        "--name",
        "disk",
        "--tls=on",
        "--tls-certificates",
        s(pki),
    ]);
    let json = run_ok(
        "nbdinfo",
        &[
            "--json",
            &format!(
                "nbds://localhost:{port}/disk?tls-certificates={}",
                pki.display()
            ),
        ],
    );
    assert_eq!(export_size(&json), 5 << 20);
    // "on" serves plaintext clients too, exports listed.
    let list = run_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}/")]);
    assert!(list.contains("disk"), "{list}");
    let info = run_ok("nbdinfo", &[&format!("nbd://127.0.0.1:{port}/disk")]);
    assert!(info.contains("without TLS"), "{info}");
}

#[test]
fn nbdcopy_through_tls_copies_an_image_out_and_in() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = random_bytes(6 << 20, 21);
    std::fs::write(&img, &data).unwrap();
    let sock = dir.path().join("s");
    let v = Vunbd::start(
        &sock,
        &[s(&img), "--tls=require", "--tls-certificates", s(pki)],
    );
    let out = dir.path().join("out.img");
    run_ok("nbdcopy", &[&tls_uri(&sock, "disk.img", pki), s(&out)]);
    assert!(std::fs::read(&out).unwrap() == data, "copy out differs");
    let other = random_bytes(6 << 20, 22);
    let src = dir.path().join("src.img");
    std::fs::write(&src, &other).unwrap();
    run_ok("nbdcopy", &[s(&src), &tls_uri(&sock, "disk.img", pki)]);
    assert_eq!(v.terminate().code(), Some(0));
    assert!(std::fs::read(&img).unwrap() == other, "copy in differs");
}

/// Sends one option and returns the reply's type.
fn option(raw: &mut Raw, option: u32, data: &[u8]) -> u32 {
    raw.s.write_all(&option_request(option, data)).unwrap();
    let (kind, _) = raw.option_reply();
    kind
}

#[test]
fn tls_require_refuses_plaintext_and_keeps_serving() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let _v = Vunbd::start(
        &sock,
        &[
            "--ramdisk",
            "1M",
            "--name",
            "d",
            "--tls=require",
            "--tls-certificates",
            s(pki),
        ],
    );
    let plain = run("nbdinfo", &[&uri(&sock, "d")]);
    assert!(!plain.status.success(), "plaintext nbdinfo succeeded");
    assert!(!run("nbdinfo", &["--list", &uri(&sock, "")])
        .status
        .success());

    // Option by option: TLS_REQD, and no export is shown.
    let mut raw = Raw::greet(&sock);
    let mut go = 1u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"d");
    go.extend_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        option(&mut raw, OPT_STRUCTURED_REPLY, &[]),
        REP_ERR_TLS_REQD
    );
    assert_eq!(option(&mut raw, OPT_LIST, &[]), REP_ERR_TLS_REQD);
    assert_eq!(option(&mut raw, OPT_INFO, &go), REP_ERR_TLS_REQD);
    assert_eq!(option(&mut raw, OPT_GO, &go), REP_ERR_TLS_REQD);
    assert_eq!(option(&mut raw, 0x7777, &[]), REP_ERR_TLS_REQD);
    // STARTTLS with data is invalid; ABORT is answered.
    assert_eq!(option(&mut raw, OPT_STARTTLS, b"x"), REP_ERR_INVALID);
    assert_eq!(option(&mut raw, OPT_ABORT, &[]), REP_ACK);
    // EXPORT_NAME cannot be refused: the connection is closed.
    let mut raw = Raw::greet(&sock);
    raw.s
        .write_all(&option_request(OPT_EXPORT_NAME, b"d"))
        .unwrap();
    assert!(raw.closed(), "EXPORT_NAME in plaintext was served");

    let json = run_ok("nbdinfo", &["--json", &tls_uri(&sock, "d", pki)]);
    assert_eq!(export_size(&json), 1 << 20);
}

#[test]
fn garbage_instead_of_a_client_hello_drops_the_connection_only() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let _v = Vunbd::start(
        &sock,
        &[
            "--ramdisk",
            "2M",
            "--name",
            "d",
            "--tls=on",
            "--tls-certificates",
            s(pki),
        ],
    );
    for garbage in [
        random_bytes(3000, 5),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        // A TLS record header claiming a huge handshake message, then nothing more.
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff],
    ] {
        let mut raw = Raw::greet(&sock);
        assert_eq!(option(&mut raw, OPT_STARTTLS, &[]), REP_ACK);
        raw.s.write_all(&garbage).unwrap();
        let _ = raw.s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        // A TLS alert at most, then the end.
        let _ = raw.s.read_to_end(&mut rest);
        assert!(rest.len() < 64, "{} bytes after garbage", rest.len());
    }
    // Garbage sent with STARTTLS in one write (read ahead into the server's buffer).
    let mut raw = Raw::greet(&sock);
    let mut bytes = option_request(OPT_STARTTLS, &[]);
    bytes.extend_from_slice(&random_bytes(500, 6));
    raw.s.write_all(&bytes).unwrap();
    assert_eq!(raw.option_reply().0, REP_ACK);
    let mut rest = Vec::new();
    let _ = raw.s.read_to_end(&mut rest);
    assert!(rest.len() < 64, "{} bytes after garbage", rest.len());
    // The server goes on: TLS and plaintext clients are served.
    let json = run_ok("nbdinfo", &["--json", &tls_uri(&sock, "d", pki)]);
    assert_eq!(export_size(&json), 2 << 20);
    let mut raw = Raw::greet(&sock);
    assert_eq!(option(&mut raw, OPT_STRUCTURED_REPLY, &[]), REP_ACK);
}

#[test]
fn tls_verify_peer_wants_a_client_certificate_of_the_ca() {
    let Some((pki, ca_only, other)) = certificates() else {
        return;
    };
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let _v = Vunbd::start(
        &sock,
        &[
            "--ramdisk",
            "1M",
            "--name",
            "d",
            "--tls=require",
            "--tls-certificates",
            s(pki),
            "--tls-verify-peer",
        ],
    );
    // libnbd presents client-cert.pem of the directory.
    let json = run_ok("nbdinfo", &["--json", &tls_uri(&sock, "d", pki)]);
    assert_eq!(export_size(&json), 1 << 20);
    // No client certificate: refused.
    assert!(!run("nbdinfo", &[&tls_uri(&sock, "d", ca_only)])
        .status
        .success());
    // Our client likewise: with the directory's client certificate, and without.
    let dev = NbdDevice::connect(&tls_uri(&sock, "d", pki)).unwrap();
    assert_eq!(dev.size(), 1 << 20);
    assert!(NbdDevice::connect(&tls_uri(&sock, "d", ca_only)).is_err());
    // A client of another CA, checking the server against that CA: refused both ways.
    let err = NbdDevice::connect(&tls_uri(&sock, "d", other)).unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[test]
fn our_client_over_tls_against_vunbd_and_its_refusals() {
    let Some((pki, _, other)) = certificates() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let model = random_bytes(3 << 20, 23);
    std::fs::write(&img, &model).unwrap();
    let (_v, port) = vunbd_tcp(&[s(&img), "--tls=require", "--tls-certificates", s(pki)]);
    let certs = pki.display();
    let dev = NbdDevice::connect(&format!(
        "nbds://localhost:{port}/disk.img?tls-certificates={certs}"
    ))
    .unwrap();
    let mut back = vec![0u8; model.len()];
    dev.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model);
    dev.write_all_at(b"over TLS", 1 << 20).unwrap();
    dev.flush().unwrap();
    let file = std::fs::read(&img).unwrap();
    assert_eq!(&file[1 << 20..(1 << 20) + 8], b"over TLS");
    // By IP address: the certificate names 127.0.0.1 too.
    let dev = NbdDevice::connect(&format!(
        "nbds://127.0.0.1:{port}/disk.img?tls-certificates={certs}"
    ))
    .unwrap();
    assert_eq!(dev.size(), 3 << 20);
    // A name the certificate does not carry.
    let err = NbdDevice::connect(&format!(
        "nbds://localhost:{port}/disk.img?tls-certificates={certs}&tls-hostname=elsewhere"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Another CA: not trusted, unless told not to check.
    let err = NbdDevice::connect(&format!(
        "nbds://localhost:{port}/disk.img?tls-certificates={}",
        other.display()
    ))
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let dev = NbdDevice::connect(&format!(
        "nbds://localhost:{port}/disk.img?tls-verify-peer=false"
    ))
    .unwrap();
    assert_eq!(dev.size(), 3 << 20);
    // Plaintext against require: told why.
    let err = NbdDevice::connect(&format!("nbd://localhost:{port}/disk.img")).unwrap_err();
    assert!(err.to_string().contains("requires TLS"), "{err}");
    // TLS against a server without it: refused, not downgraded.
    let (_plain, plain_port) = vunbd_tcp(&["--ramdisk", "1M"]);
    let err = NbdDevice::connect(&format!(
        "nbds://localhost:{plain_port}/ramdisk?tls-certificates={certs}"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
}

#[test]
fn our_client_against_nbdkit_with_tls_required() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let child = Command::new("nbdkit")
        .args(["-f", "-U", s(&sock), "--tls=require", "--tls-certificates"])
        .arg(pki)
        .args(["memory", "64M"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut kit = Peer(child);
    wait_for_socket(&sock, Some(&mut kit.0));
    let dev = NbdDevice::connect(&tls_uri(&sock, "", pki)).unwrap();
    assert_eq!(dev.size(), 64 << 20);
    let data = random_bytes(5 << 20, 24);
    dev.write_all_at(&data, 7 << 20).unwrap();
    dev.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read_exact_at(&mut back, 7 << 20).unwrap();
    assert!(back == data);
    // nbdkit refuses our plaintext client.
    let err = NbdDevice::connect(&uri(&sock, "")).unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // Over TCP, by name.
    let port = free_port();
    let child = Command::new("nbdkit")
        .args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["--tls=require", "--tls-certificates"])
        .arg(pki)
        .args(["memory", "8M"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _tcp = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.display()
    );
    let dev = loop {
        match NbdDevice::connect(&url) {
            Ok(d) => break d,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(dev.size(), 8 << 20);
}

#[test]
fn our_client_against_qemu_nbd_with_x509_credentials() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    if !have("qemu-nbd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = random_bytes(4 << 20, 25);
    std::fs::write(&img, &model).unwrap();
    let sock = dir.path().join("s");
    // qemu's server credentials check client certificates by default (verify-peer=on):
    // ours presents client-cert.pem of the directory.
    let child = Command::new("qemu-nbd")
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server",
            pki.display()
        ))
        .args([
            "--tls-creds",
            "tls0",
            "-k",
            s(&sock),
            "-f",
            "raw",
            "-x",
            "q",
        ])
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut q = Peer(child);
    wait_for_socket(&sock, Some(&mut q.0));
    let dev = NbdDevice::connect(&tls_uri(&sock, "q", pki)).unwrap();
    assert_eq!(dev.size(), 4 << 20);
    let mut back = vec![0u8; model.len()];
    dev.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model);
    dev.write_all_at(b"qemu over TLS", 4096).unwrap();
    model[4096..4096 + 13].copy_from_slice(b"qemu over TLS");
    dev.flush().unwrap();
    drop(dev);
    drop(q);
    assert!(std::fs::read(&img).unwrap() == model);
}

#[test]
fn vunbd_tls_options_are_checked_at_start() {
    let Some((_, ca_only, _)) = certificates() else {
        return;
    };
    let vunbd = env!("CARGO_BIN_EXE_vunbd");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let out = |args: &[&str]| {
        Command::new(vunbd)
            .args(["--ramdisk", "1M", "--unix", s(&sock)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = out(&["--tls=require"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tls-certificates"));
    let o = out(&["--tls-certificates", s(ca_only)]);
    assert_eq!(o.status.code(), Some(2));
    // No server certificate in the directory: a clear runtime failure.
    let o = out(&["--tls=on", "--tls-certificates", s(ca_only)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("server-cert.pem"), "{err}");
    let _ = UnixStream::connect(&sock).unwrap_err();
}

#[test]
fn a_client_dripping_its_tls_handshake_is_dropped_at_the_handshake_timeout() {
    let Some((pki, _, _)) = certificates() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let tls = vudev_nbd::ServerTls::from_dir(pki, vudev_nbd::TlsMode::Require, false).unwrap();
    let mut server = vudev_nbd::Server::new(vudev_nbd::ServerOptions {
        handshake_timeout: Duration::from_secs(1),
        tls: Some(tls),
        ..Default::default()
    });
    let disk = std::sync::Arc::new(vudev::Ramdisk::new(1 << 20).unwrap());
    server
        .add_export("d", vudev_nbd::Export::new(disk))
        .unwrap();
    let server = std::sync::Arc::new(server);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let serving = server.clone();
    std::thread::spawn(move || serving.serve_unix(listener));
    let mut raw = Raw::greet(&sock);
    assert_eq!(option(&mut raw, OPT_STARTTLS, &[]), REP_ACK);
    // A TLS record header announcing a 512-byte ClientHello, then a byte every 200 ms:
    // each read is within the per-read timeout, the whole is not.
    raw.s
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    let mut dropped = false;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        if raw.s.write_all(&[0]).is_err() {
            dropped = true;
            break;
        }
    }
    let waited = started.elapsed();
    assert!(dropped, "still connected after {waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    server.shutdown();
}
