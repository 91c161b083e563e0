//! The on-disk layer format of the C vufs, byte for byte.
//!
//! Inside SOURCE, the directory `.-` holds the layer's metadata:
//! - a **whiteout** for view path `P` is an empty regular file `SOURCE/.-/P`;
//!   a regular file at `SOURCE/.-/D` also hides everything below `D`
//!   (a `stat` below it fails with ENOTDIR, which counts as deleted);
//!   directories under `.-` (mode 0700) only hold deeper entries;
//! - a **vstat** side file `SOURCE/.-/P\x7f` overrides fields of `P`'s `stat`,
//!   one `key=value` per line: `type=f|s|c|b` (`-` also means `f`),
//!   `mode=0NNN` (octal), `uid=N`, `gid=N`, `rdev=MAJ,MIN`, `dev=MAJ,MIN`,
//!   `ctime=SEC,NSEC` (applied only if later than the real ctime).
//!   Numbers parse as C's `strtoul(s, NULL, 0)` (so `0x` is hex and a
//!   leading `0` octal); unknown keys are ignored. Written in that order,
//!   as the C vufs writes them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The metadata directory inside SOURCE.
pub const META_DIR: &str = ".-";

/// The byte appended to a path to name its vstat side file.
pub const VSTAT_SUFFIX: u8 = 0x7f;

/// The name of the vstat file of view path `path`, relative to `.-`.
pub fn vstat_path(path: &Path) -> PathBuf {
    let mut bytes = path.as_os_str().as_bytes().to_vec();
    bytes.push(VSTAT_SUFFIX);
    PathBuf::from(OsString::from_vec(bytes))
}

/// True if a vstat side file can be named for an entry called `name`: the suffix byte must
/// fit within NAME_MAX (255 bytes).
pub fn vstat_name_fits(name: &OsStr) -> bool {
    name.len() < 255
}

/// True if `name` is a vstat side file name (ends in `\x7f`).
pub fn is_vstat_name(name: &OsStr) -> bool {
    name.as_bytes().last() == Some(&VSTAT_SUFFIX)
}

/// `stat` overrides from a vstat side file. `None` leaves the field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VStat {
    /// `S_IFMT` bits of `type=` (regular, socket, char or block device).
    pub kind: Option<u32>,
    /// Permission bits (`mode=`, without `S_IFMT`).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Device number (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
    /// Device of the file (major, minor).
    pub dev: Option<(u32, u32)>,
    /// Status change time (seconds, nanoseconds).
    pub ctime: Option<(i64, i64)>,
}

/// C `strtoul(s, &tail, 0)`: the value and the rest of the text.
fn strtoul(s: &str) -> (u64, &str) {
    let s = s.trim_start();
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    let value = u64::from_str_radix(&digits[..end], radix).unwrap_or(0);
    (value, &digits[end..])
}

fn pair(s: &str) -> (u64, u64) {
    let (a, tail) = strtoul(s);
    match tail.strip_prefix(',') {
        Some(rest) => (a, strtoul(rest).0),
        None => (a, 0),
    }
}

impl VStat {
    /// True if the file sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == VStat::default()
    }

    /// Parses a vstat file (the C reader looks at the first 1023 bytes).
    pub fn parse(data: &[u8]) -> VStat {
        let data = &data[..data.len().min(1023)];
        let text = String::from_utf8_lossy(data);
        let mut v = VStat::default();
        for line in text.split('\n') {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            match key.trim() {
                "type" => {
                    v.kind = match value.chars().next() {
                        Some('s') => Some(libc::S_IFSOCK),
                        Some('-') | Some('f') => Some(libc::S_IFREG),
                        Some('c') => Some(libc::S_IFCHR),
                        Some('b') => Some(libc::S_IFBLK),
                        _ => v.kind,
                    }
                }
                "mode" => {
                    let digits = value.trim();
                    let end = digits
                        .find(|c: char| !c.is_digit(8))
                        .unwrap_or(digits.len());
                    let mode = u32::from_str_radix(&digits[..end], 8).unwrap_or(0);
                    v.mode = Some(mode & !libc::S_IFMT);
                }
                "uid" => v.uid = Some(strtoul(value).0 as u32),
                "gid" => v.gid = Some(strtoul(value).0 as u32),
                "rdev" => {
                    let (a, b) = pair(value);
                    v.rdev = Some((a as u32, b as u32));
                }
                "dev" => {
                    let (a, b) = pair(value);
                    v.dev = Some((a as u32, b as u32));
                }
                "ctime" => {
                    let (a, b) = pair(value);
                    v.ctime = Some((a as i64, b as i64));
                }
                _ => {}
            }
        }
        v
    }

    /// The file's text, as the C vufs writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(kind) = self.kind {
            let c = match kind {
                libc::S_IFREG => Some('f'),
                libc::S_IFSOCK => Some('s'),
                libc::S_IFCHR => Some('c'),
                libc::S_IFBLK => Some('b'),
                _ => None,
            };
            if let Some(c) = c {
                out.push_str(&format!("type={c}\n"));
            }
        }
        if let Some(mode) = self.mode {
            out.push_str(&format!("mode=0{:o}\n", mode & !libc::S_IFMT));
        }
        if let Some(uid) = self.uid {
            out.push_str(&format!("uid={uid}\n"));
        }
        if let Some(gid) = self.gid {
            out.push_str(&format!("gid={gid}\n"));
        }
        if let Some((a, b)) = self.rdev {
            out.push_str(&format!("rdev={a},{b}\n"));
        }
        if let Some((a, b)) = self.dev {
            out.push_str(&format!("dev={a},{b}\n"));
        }
        if let Some((s, ns)) = self.ctime {
            // As the reader parses them (strtoul, then a cast): unsigned, so a value that
            // wrapped negative reads back the same.
            out.push_str(&format!("ctime={},{}\n", s as u64, ns as u64));
        }
        out
    }

    /// Fields set in `other` replace those here.
    pub fn update(&mut self, other: &VStat) {
        self.kind = other.kind.or(self.kind);
        self.mode = other.mode.or(self.mode);
        self.uid = other.uid.or(self.uid);
        self.gid = other.gid.or(self.gid);
        self.rdev = other.rdev.or(self.rdev);
        self.dev = other.dev.or(self.dev);
        self.ctime = other.ctime.or(self.ctime);
    }

    /// Applies the overrides to a host `stat`.
    pub fn apply(&self, st: &mut rustix::fs::Stat) {
        if let Some(kind) = self.kind {
            st.st_mode = (st.st_mode & !libc::S_IFMT) | kind;
        }
        if let Some(mode) = self.mode {
            st.st_mode = (st.st_mode & libc::S_IFMT) | (mode & !libc::S_IFMT);
        }
        if let Some(uid) = self.uid {
            st.st_uid = uid;
        }
        if let Some(gid) = self.gid {
            st.st_gid = gid;
        }
        if let Some((a, b)) = self.rdev {
            st.st_rdev = libc::makedev(a, b);
        }
        if let Some((a, b)) = self.dev {
            st.st_dev = libc::makedev(a, b);
        }
        if let Some((s, ns)) = self.ctime {
            if (s, ns) > (st.st_ctime, st.st_ctime_nsec as i64) {
                st.st_ctime = s;
                st.st_ctime_nsec = ns as _;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/fuzz_targets/vufs_layer.rs: a ctime past i64::MAX wraps negative when
    /// parsed; rendering it must give text that parses back to the same value.
    #[test]
    fn a_wrapped_ctime_renders_and_parses_back_the_same() {
        let v = VStat::parse(b"ctime=9999999999999999999,5\n");
        assert!(v.ctime.is_some_and(|(s, _)| s < 0));
        assert_eq!(VStat::parse(v.render().as_bytes()), v);
    }

    #[test]
    fn parses_what_the_c_vufs_writes() {
        let v = VStat::parse(b"type=c\nmode=0644\nuid=0\ngid=0\nrdev=1,3\n");
        assert_eq!(v.kind, Some(libc::S_IFCHR));
        assert_eq!(v.mode, Some(0o644));
        assert_eq!((v.uid, v.gid), (Some(0), Some(0)));
        assert_eq!(v.rdev, Some((1, 3)));
        assert_eq!(v.render(), "type=c\nmode=0644\nuid=0\ngid=0\nrdev=1,3\n");
    }

    #[test]
    fn round_trip_and_c_number_syntax() {
        let v = VStat {
            kind: Some(libc::S_IFBLK),
            mode: Some(0o4755),
            uid: Some(1000),
            gid: Some(100),
            rdev: Some((8, 1)),
            dev: Some((0, 5)),
            ctime: Some((1700000000, 5)),
        };
        assert_eq!(VStat::parse(v.render().as_bytes()), v);
        let w = VStat::parse(b"uid=0x10\ngid=010\nbogus=1\ntype=-\nrdev=7\n");
        assert_eq!((w.uid, w.gid), (Some(16), Some(8)));
        assert_eq!(w.kind, Some(libc::S_IFREG));
        assert_eq!(w.rdev, Some((7, 0)));
        assert!(VStat::parse(b"").is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(
            vstat_path(Path::new("a/b")).as_os_str().as_bytes(),
            b"a/b\x7f"
        );
        assert!(is_vstat_name(OsStr::new("x\x7f")));
        assert!(!is_vstat_name(OsStr::new("x")));
    }
}
