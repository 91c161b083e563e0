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
        self.partition == other.partition
            && std::fs::canonicalize(&self.image).ok() == std::fs::canonicalize(&other.image).ok()
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
    let file = crate::image_lock::open_locked(image, read_only)?;
    let disk = crate::image_lock::through_format(file, image, read_only)?;
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
        assert_eq!(
            parse("/absent.img@1:/x"),
            Address::Host("/absent.img@1:/x".into())
        );
    }
}
