//! What the exFAT driver tests share: making images with mkfs.exfat, filling and reading
//! them through exfat-fuse (on a loop device: as root it insists on a block device),
//! walking a tree through the driver, and fsck.exfat as an assertion.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use testkit::{s, sh, sh_output};
use vudev::{BlockDevice, FileDevice};
use vufuse_api::{Context, Fh, FileKind, FileSystem, Ino};
use vufuse_exfat::{ExFatFs, ExFatOptions};

pub fn ctx() -> Context {
    Context::current()
}

fn have(tool: &str) -> bool {
    sh_output(&format!("command -v {tool} >/dev/null"))
        .status
        .success()
}

/// Why the exfatprogs tests cannot run here, if they cannot.
pub fn exfatprogs_missing() -> Option<String> {
    ["mkfs.exfat", "fsck.exfat"]
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} is missing (apt-get install exfatprogs)"))
}

/// Why exfat-fuse cannot be used here, if it cannot.
pub fn exfat_fuse_missing() -> Option<String> {
    if let Some(why) = exfatprogs_missing() {
        return Some(why);
    }
    if !have("mount.exfat-fuse") {
        return Some("mount.exfat-fuse is missing (apt-get install exfat-fuse)".into());
    }
    if sh("id -u").trim() != "0" {
        return Some("not root: exfat-fuse needs a loop device".into());
    }
    if !Path::new("/dev/fuse").exists() || !have("losetup") {
        return Some("no /dev/fuse or no losetup".into());
    }
    None
}

/// A sparse image of `size` bytes made by mkfs.exfat (label TESTVOL).
pub fn mkfs(dir: &Path, name: &str, size: u64, cluster: Option<u32>) -> PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let c = cluster.map(|c| format!("-c {c}")).unwrap_or_default();
    sh(&format!("mkfs.exfat {c} -L TESTVOL {} >/dev/null", s(&img)));
    img
}

pub fn open(img: &Path, read_only: bool) -> ExFatFs {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, read_only).unwrap());
    ExFatFs::open(
        dev,
        ExFatOptions {
            read_only,
            ..ExFatOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", img.display()))
}

/// Asserts that `fsck.exfat -n` finds nothing wrong; returns its report.
pub fn fsck_clean(img: &Path) -> String {
    let out = Command::new("fsck.exfat")
        .arg("-n")
        .arg(img)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.contains("clean"),
        "fsck.exfat -n {}: {report}",
        img.display()
    );
    report
}

/// exfat-fuse serving an image on a loop device at a mount point, until dropped.
pub struct FuseMount {
    pub dir: PathBuf,
    loop_dev: String,
    mounted: bool,
}

impl FuseMount {
    pub fn new(img: &Path, mount_point: &Path) -> FuseMount {
        std::fs::create_dir_all(mount_point).unwrap();
        let loop_dev = sh(&format!("losetup -f --show {}", s(img)))
            .trim()
            .to_string();
        let mut m = FuseMount {
            dir: mount_point.to_path_buf(),
            loop_dev,
            mounted: false,
        };
        sh(&format!(
            "mount.exfat-fuse {} {} 2>&1",
            m.loop_dev,
            s(mount_point)
        ));
        m.mounted = true;
        m
    }

    /// Unmounts (exfat-fuse writes everything back first) and frees the loop device.
    pub fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if self.mounted {
            sh(&format!("fusermount -u {}", s(&self.dir)));
            self.mounted = false;
        }
        if !self.loop_dev.is_empty() {
            let _ = sh_output(&format!("losetup -d {}", self.loop_dev));
            self.loop_dev.clear();
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sh_output(&format!("fusermount -u {}", s(&self.dir)));
            self.mounted = false;
        }
        if !self.loop_dev.is_empty() {
            let _ = sh_output(&format!("losetup -d {}", self.loop_dev));
        }
    }
}

/// A file or directory seen in a tree: contents (None: directory) and mtime (files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub data: Option<Vec<u8>>,
    pub mtime: Option<SystemTime>,
}

pub fn read_file(fs: &ExFatFs, ino: Ino, size: u64) -> Vec<u8> {
    let opened = fs.open(&ctx(), ino, libc::O_RDONLY).unwrap();
    let mut data = vec![0u8; size as usize];
    let mut done = 0;
    while done < data.len() {
        let end = (done + 131072).min(data.len());
        let n = fs
            .read(&ctx(), ino, opened.fh, done as u64, &mut data[done..end])
            .unwrap();
        assert!(n > 0, "short read");
        done += n;
    }
    fs.release(&ctx(), ino, opened.fh).unwrap();
    data
}

/// Everything under `ino` through the driver.
pub fn driver_tree(fs: &ExFatFs, ino: Ino, prefix: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    let mut names = Vec::new();
    fs.readdir(&ctx(), ino, Fh(0), 0, &mut |e| {
        names.push((e.name.to_os_string(), e.kind));
        true
    })
    .unwrap();
    for (name, kind) in names {
        if name == "." || name == ".." {
            continue;
        }
        let entry = fs.lookup(&ctx(), ino, &name).unwrap();
        assert_eq!(entry.attr.kind, kind);
        let path = prefix.join(&name);
        if kind == FileKind::Dir {
            out.insert(
                path.clone(),
                Seen {
                    data: None,
                    mtime: None,
                },
            );
            driver_tree(fs, entry.attr.ino, &path, out);
        } else {
            let data = read_file(fs, entry.attr.ino, entry.attr.size);
            out.insert(
                path,
                Seen {
                    data: Some(data),
                    mtime: Some(entry.attr.mtime),
                },
            );
        }
        fs.forget(entry.attr.ino, 1);
    }
}

/// The same for a host directory (mtimes truncated to 10 ms, exFAT's resolution).
pub fn host_tree(root: &Path) -> BTreeMap<PathBuf, Seen> {
    fn walk(dir: &Path, prefix: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = prefix.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                out.insert(
                    path.clone(),
                    Seen {
                        data: None,
                        mtime: None,
                    },
                );
                walk(&e.path(), &path, out);
            } else {
                let mtime = e.metadata().unwrap().modified().unwrap();
                out.insert(
                    path,
                    Seen {
                        data: Some(std::fs::read(e.path()).unwrap()),
                        mtime: Some(centiseconds(mtime)),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

pub fn centiseconds(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + std::time::Duration::from_millis(d.as_millis() as u64 / 10 * 10)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
