//! Addresses: `IMAGE@N:/path` (N a Linux partition number or a GPT
//! partition name), `IMAGE:/path` (unpartitioned image, or the only partition
//! with a filesystem), or a plain host path.

use crate::fail;
use crate::util::Outcome;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vudev::part::{self, Partition};
use vudev::{BlockDevice, PartitionedDisk};

/// Where a path lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A file or directory on the host.
    Host(PathBuf),
    /// A path inside a filesystem of an image.
    Image(ImagePath),
}

/// A path inside an image's filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePath {
    /// The image file.
    pub image: PathBuf,
    /// Partition number or name; `None` for the whole image.
    pub partition: Option<String>,
    /// Absolute path inside the filesystem ("/" for the root).
    pub path: String,
}

impl ImagePath {
    /// The volume part as the user wrote it: `IMAGE` or `IMAGE@N`.
    pub fn volume_name(&self) -> String {
        match &self.partition {
            Some(p) => format!("{}@{p}", self.image.display()),
            None => self.image.display().to_string(),
        }
    }

    /// True if both name the same filesystem.
    pub fn same_volume(&self, other: &ImagePath) -> bool {
        let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        self.partition == other.partition && key(&self.image) == key(&other.image)
    }
}

impl std::fmt::Display for ImagePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.volume_name(), self.path)
    }
}

/// Parses an address. `X:/path` or `X:` is an image address when the image
/// part (`X` without a trailing `@N`) is an existing file; anything else is a
/// host path.
pub fn parse(text: &str) -> Address {
    if vufuse_mount::is_uri(text) {
        if let Some(a) = parse_uri(text) {
            return a;
        }
    }
    if let Some(colon) = text.find(':') {
        let (volume, rest) = (&text[..colon], &text[colon + 1..]);
        if rest.is_empty() || rest.starts_with('/') {
            let (image, partition) = match volume.rfind('@') {
                Some(at) if !Path::new(volume).is_file() => {
                    (&volume[..at], Some(volume[at + 1..].to_string()))
                }
                _ => (volume, None),
            };
            if !image.is_empty() && Path::new(image).is_file() {
                return Address::Image(ImagePath {
                    image: PathBuf::from(image),
                    partition,
                    path: normalize(rest),
                });
            }
        }
    }
    Address::Host(PathBuf::from(text))
}

/// An NBD URI address: `URI[@N]:/path` or `URI[@N]:`. The separator is the first `:` after
/// the scheme that ends the text or starts a `/path` (a port's `:` is followed by digits,
/// an IPv6 address's by more of the address); `@N` is a partition when what follows the
/// last `@` looks like one (no `/`, `?`, `=` or `:`).
fn parse_uri(text: &str) -> Option<Address> {
    let scheme = text.find("://")? + 3;
    let tail = &text[scheme..];
    let colon = tail
        .char_indices()
        .filter(|&(_, c)| c == ':')
        .map(|(i, _)| i)
        .find(|&i| matches!(tail.as_bytes().get(i + 1), None | Some(b'/')))?;
    let (volume, rest) = (&text[..scheme + colon], &tail[colon + 1..]);
    let (image, partition) = match volume[scheme..].rfind('@') {
        Some(at) if !volume[scheme + at + 1..].contains(['/', '?', '=', ':']) => (
            &volume[..scheme + at],
            Some(volume[scheme + at + 1..].to_string()),
        ),
        _ => (volume, None),
    };
    Some(Address::Image(ImagePath {
        image: PathBuf::from(image),
        partition,
        path: normalize(rest),
    }))
}

/// Parses an address that must name a path in an image.
pub fn parse_image(text: &str) -> Outcome<ImagePath> {
    match parse(text) {
        Address::Image(p) => Ok(p),
        Address::Host(_) => Err(match text.split_once(':') {
            Some((volume, _)) => {
                let image = volume.rsplit_once('@').map_or(volume, |(i, _)| i);
                fail!("{text}: no image file {image:?}")
            }
            None => fail!("{text}: not an image address (IMAGE@N:/path or IMAGE:/path)"),
        }),
    }
}

/// "/a/b/../c/" as "/a/c"; "" as "/".
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Finds a partition by number or GPT name.
pub fn find_partition<'t>(table: &'t part::PartitionTable, which: &str) -> Option<&'t Partition> {
    if let Ok(n) = which.parse::<u32>() {
        return table.get(n);
    }
    table.partitions.iter().find(|p| p.name == which)
}

/// Opens the device an image address's filesystem lives on.
pub fn open_device(
    image: &Path,
    partition: Option<&str>,
    read_only: bool,
) -> Outcome<Arc<dyn BlockDevice>> {
    let disk = crate::image_lock::open_disk(image, read_only)?;
    let Some(which) = partition else {
        return Ok(disk);
    };
    let table = part::probe(disk.as_ref())
        .map_err(|e| fail!("{}: partition table unusable: {e}", image.display()))?
        .ok_or_else(|| {
            fail!(
                "{}@{which}: the image has no partition table",
                image.display()
            )
        })?;
    let p = find_partition(&table, which).ok_or_else(|| {
        let known: Vec<String> = table
            .partitions
            .iter()
            .map(|p| {
                if p.name.is_empty() {
                    p.number.to_string()
                } else {
                    format!("{} ({})", p.number, p.name)
                }
            })
            .collect();
        fail!(
            "{}@{which}: no such partition (the image has: {})",
            image.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    })?;
    if p.ptype.is_extended() {
        return Err(fail!(
            "{}@{which}: an extended partition holds no filesystem",
            image.display()
        ));
    }
    PartitionedDisk::new(disk)
        .device(p.number)
        .map_err(|e| fail!("{}@{which}: {e}", image.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_image_partition_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::write(&img, b"").unwrap();
        let s = img.to_str().unwrap();
        assert_eq!(
            parse(&format!("{s}@2:/boot/../etc/x")),
            Address::Image(ImagePath {
                image: img.clone(),
                partition: Some("2".into()),
                path: "/etc/x".into()
            })
        );
        assert_eq!(
            parse(&format!("{s}:")),
            Address::Image(ImagePath {
                image: img.clone(),
                partition: None,
                path: "/".into()
            })
        );
        assert_eq!(parse("plain/file"), Address::Host("plain/file".into()));
        let uri = |image: &str, partition: Option<&str>, path: &str| {
            Address::Image(ImagePath {
                image: image.into(),
                partition: partition.map(Into::into),
                path: path.into(),
            })
        };
        assert_eq!(
            parse("nbd+unix:///disk?socket=/run/s.sock@2:/etc/x"),
            uri("nbd+unix:///disk?socket=/run/s.sock", Some("2"), "/etc/x")
        );
        assert_eq!(
            parse("nbd://localhost:10809/exp:"),
            uri("nbd://localhost:10809/exp", None, "/")
        );
        assert_eq!(
            parse("nbd://[::1]:10809/@boot:/a"),
            uri("nbd://[::1]:10809/", Some("boot"), "/a")
        );
        assert_eq!(
            parse("/absent.img@1:/x"),
            Address::Host("/absent.img@1:/x".into())
        );
    }
}
