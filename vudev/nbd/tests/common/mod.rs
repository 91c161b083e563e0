//! Shared by the integration tests: running vunbd, waiting for sockets, a raw NBD client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vudev_nbd::proto::*;

/// A running vunbd, killed (SIGKILL) when dropped unless stopped first.
pub struct Vunbd {
    pub child: Option<Child>,
    pub socket: PathBuf,
}

impl Vunbd {
    /// Starts vunbd with `args` plus `--unix SOCKET`, and waits until it accepts.
    pub fn start(socket: &Path, args: &[&str]) -> Vunbd {
        let child = Command::new(env!("CARGO_BIN_EXE_vunbd"))
            .args(args)
            .arg("--unix")
            .arg(socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("vunbd starts");
        let mut v = Vunbd {
            child: Some(child),
            socket: socket.to_path_buf(),
        };
        wait_for_socket(socket, v.child.as_mut());
        v
    }

    /// `nbd+unix:///NAME?socket=S`.
    pub fn uri(&self, name: &str) -> String {
        uri(&self.socket, name)
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "vunbd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vunbd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server process (nbdkit, qemu-nbd, vunbd), killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; taken by the next server started).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// vunbd with `args` on 127.0.0.1:PORT, once it accepts.
pub fn vunbd_tcp(args: &[&str]) -> (Peer, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_vunbd"))
        .args(args)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(p.0.try_wait().unwrap().is_none(), "vunbd exited early");
        assert!(Instant::now() < deadline, "vunbd never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, port)
}

pub fn uri(socket: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", socket.display())
}

/// Waits until `socket` accepts connections (or the child exits).
pub fn wait_for_socket(socket: &Path, mut child: Option<&mut Child>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if UnixStream::connect(socket).is_ok() {
            return;
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("server exited early: {status}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `tool` is on PATH; else prints why the test is skipped.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        testkit::skip(&format!(
            "{tool} is not installed (apt-get install libnbd-bin nbdkit nbd-server qemu-utils gnutls-bin)"
        ));
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A raw client: fixed newstyle handshake by hand, then raw requests.
pub struct Raw {
    pub s: UnixStream,
    pub structured: bool,
}

impl Raw {
    /// Connects and reads the server greeting; sends client flags.
    pub fn greet(socket: &Path) -> Raw {
        let mut s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(be64(&hello[0..8]), NBDMAGIC);
        assert_eq!(be64(&hello[8..16]), IHAVEOPT);
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        Raw {
            s,
            structured: false,
        }
    }

    /// Reads one option reply: (type, data).
    pub fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(be64(&h[0..8]), REPLY_MAGIC);
        let len = be32(&h[16..20]);
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        (be32(&h[12..16]), d)
    }

    /// Handshake up to transmission on `name` with NBD_OPT_GO; returns (size, flags).
    pub fn go(socket: &Path, name: &str, structured: bool) -> (Raw, u64, u16) {
        let mut r = Raw::greet(socket);
        if structured {
            r.s.write_all(&option_request(OPT_STRUCTURED_REPLY, &[]))
                .unwrap();
            assert_eq!(r.option_reply().0, REP_ACK);
            r.structured = true;
        }
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        r.s.write_all(&option_request(OPT_GO, &d)).unwrap();
        let mut info = None;
        loop {
            let (kind, data) = r.option_reply();
            match kind {
                REP_INFO if be16(&data) == INFO_EXPORT => {
                    info = Some((be64(&data[2..10]), be16(&data[10..12])))
                }
                REP_INFO => {}
                REP_ACK => break,
                other => panic!(
                    "NBD_OPT_GO failed: {other:#x} {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        let (size, flags) = info.unwrap();
        (r, size, flags)
    }

    pub fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let req = Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        };
        self.s.write_all(&req.encode()).unwrap();
    }

    /// Reads a simple reply (no payload): (error, cookie).
    pub fn simple(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(be32(&h[0..4]), SIMPLE_REPLY_MAGIC);
        (be32(&h[4..8]), be64(&h[8..16]))
    }

    /// The error of the next reply, simple or structured (0 for success), skipping payloads
    /// of successful structured chunks; `read_len` is the payload of a simple read reply.
    pub fn error_of_reply(&mut self, read_len: usize) -> u32 {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        match be32(&m) {
            SIMPLE_REPLY_MAGIC => {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).unwrap();
                let e = be32(&h[0..4]);
                if e == 0 {
                    let mut d = vec![0u8; read_len];
                    self.s.read_exact(&mut d).unwrap();
                }
                e
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut err = 0;
                let mut first = true;
                loop {
                    if !first {
                        self.s.read_exact(&mut m).unwrap();
                        assert_eq!(be32(&m), STRUCTURED_REPLY_MAGIC);
                    }
                    first = false;
                    let mut h = [0u8; 16];
                    self.s.read_exact(&mut h).unwrap();
                    let flags = be16(&h[0..2]);
                    let kind = be16(&h[2..4]);
                    let len = be32(&h[12..16]);
                    let mut d = vec![0u8; len as usize];
                    self.s.read_exact(&mut d).unwrap();
                    if kind & 0x8000 != 0 {
                        err = be32(&d[0..4]);
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return err;
                    }
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}
