//! Shared helpers for the format tests: tool checks, a seeded generator, oracles.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use testkit::{run, s, skip};
use vudev::BlockDevice;

/// True when every tool runs; otherwise prints why the test is skipped.
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            skip(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// xorshift64*, seeded.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A raw file of `len` bytes: random data with zero stretches (so images have holes).
pub fn random_raw(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    let chunk = 256 * 1024;
    for (i, c) in data.chunks_mut(chunk).enumerate() {
        if i % 3 == 1 {
            c.fill(0);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// The whole device, read in 1 MiB calls.
pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.size() as usize];
    for (i, c) in out.chunks_mut(1 << 20).enumerate() {
        dev.read_exact_at(c, (i << 20) as u64).unwrap();
    }
    out
}

/// What qemu sees in `img`, as raw bytes (`qemu-img convert -O raw`).
pub fn qemu_raw(img: &Path, format: &str) -> Vec<u8> {
    let out = img.with_extension("qemu-raw");
    testkit::run_ok(
        "qemu-img",
        &["convert", "-f", format, "-O", "raw", s(img), s(&out)],
    );
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// `qemu-img check` output, asserting no errors and no leaks.
pub fn qemu_check_clean(img: &Path, format: &str) -> String {
    let out = run("qemu-img", &["check", "-f", format, s(img)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "qemu-img check {} failed ({}):\n{text}",
        img.display(),
        out.status
    );
    assert!(!text.contains("ERROR"), "check found errors:\n{text}");
    assert!(!text.contains("Leaked"), "check found leaks:\n{text}");
    assert!(!text.contains("leaked"), "check found leaks:\n{text}");
    text
}

/// Random writes of seeded data (offsets anywhere, sizes 1 byte to 300 KiB), mirrored
/// into `mirror`; returns bytes written.
pub fn random_writes(dev: &dyn BlockDevice, mirror: &mut [u8], count: usize, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let size = mirror.len() as u64;
    let mut total = 0;
    for i in 0..count {
        let len = match i % 4 {
            0 => rng.below(600) + 1,
            1 => rng.below(300 * 1024) + 1,
            2 => 65536,
            _ => rng.below(8192) + 1,
        };
        let off = rng.below(size - len);
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf);
        assert_eq!(dev.write_all_at(&buf, off), Ok(()), "write {len} at {off}");
        mirror[off as usize..(off + len) as usize].copy_from_slice(&buf);
        total += len;
    }
    total
}

/// Asserts two byte strings are equal, naming the first difference.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} ({:#x}): got {:#04x}, want {:#04x}",
            i, got[i], want[i]
        );
    }
}

/// A cheap content hash of a file (FNV-1a 64), to prove it unchanged.
pub fn file_hash(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn qemu_img(args: &[&str]) -> String {
    testkit::run_ok("qemu-img", args)
}

pub fn qemu_io(img: &Path, format: &str, cmd: &str) {
    testkit::run_ok("qemu-io", &["-f", format, "-c", cmd, s(img)]);
}
