//! The SPEC file: its TOML shape, where the image goes, and the epoch of a reproducible build.

use crate::fail;
use crate::util::Outcome;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// 1980-01-01, the earliest time FAT can store.
const FAT_EPOCH: u64 = 315_532_800;

/// A size written as a string ("4K") or a bare number of bytes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum SizeText {
    Bytes(u64),
    Text(String),
}

impl SizeText {
    pub(super) fn text(&self) -> String {
        match self {
            SizeText::Bytes(n) => n.to_string(),
            SizeText::Text(t) => t.clone(),
        }
    }
}

pub(super) fn opt_text(v: &Option<SizeText>) -> Option<String> {
    v.as_ref().map(SizeText::text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub(super) size: SizeText,
    pub(super) table: String,
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) reproducible: bool,
    pub(super) epoch: Option<u64>,
    pub(super) output: Option<String>,
    /// Allocate every byte of a raw output (zeros, not holes), as genimage's `fill`.
    #[serde(default)]
    pub(super) fill: bool,
    /// GPT partitions also listed in a hybrid MBR (one to three numbers).
    #[serde(default)]
    pub(super) hybrid_mbr: Vec<u32>,
    #[serde(default, rename = "partition")]
    pub(super) partitions: Vec<PartSpec>,
    /// Files written at fixed offsets outside the partitions (a bootloader).
    #[serde(default)]
    pub(super) raw: Vec<RawSpec>,
}

/// A file written at a byte offset of the disk, outside the table and the partitions.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    pub(super) file: String,
    pub(super) offset: SizeText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PartSpec {
    #[serde(rename = "type")]
    pub(super) ptype: Option<String>,
    pub(super) size: Option<SizeText>,
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) bootable: bool,
    pub(super) fs: Option<String>,
    pub(super) label: Option<String>,
    pub(super) cluster_size: Option<SizeText>,
    pub(super) block_size: Option<SizeText>,
    #[serde(default)]
    pub(super) contents: Vec<Content>,
    /// Start of the partition, in bytes from the disk's start (else the first free aligned).
    pub(super) offset: Option<SizeText>,
    /// Alignment of the start when `offset` is not given (default 1M).
    pub(super) align: Option<SizeText>,
    /// An existing image file copied into the partition (instead of `fs` and `contents`).
    pub(super) image: Option<String>,
    /// GPT partition GUID.
    pub(super) uuid: Option<String>,
    /// Filesystem UUID (ext).
    pub(super) fs_uuid: Option<String>,
    /// Volume serial (FAT, exFAT), hex.
    pub(super) volume_id: Option<String>,
    /// mke2fs features (`-O`), e.g. ["^metadata_csum", "^has_journal"].
    #[serde(default)]
    pub(super) features: Vec<String>,
    /// Its MBR type in a hybrid MBR (hex; else from its filesystem).
    pub(super) mbr_type: Option<String>,
    /// An MBR logical partition (needs an `extended` partition before it).
    #[serde(default)]
    pub(super) logical: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Content {
    pub(super) from: Option<String>,
    pub(super) text: Option<String>,
    pub(super) to: String,
    pub(super) mode: Option<String>,
}

impl Spec {
    /// Reads and parses the SPEC at `path`.
    pub(super) fn load(path: &Path) -> Outcome<Spec> {
        let text = std::fs::read_to_string(path).map_err(|e| fail!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| fail!("{}: {e}", path.display()))
    }

    /// The image to write: `-o`, else the SPEC's `output` (relative to the SPEC), else
    /// `STEM.img` in the current directory.
    pub(super) fn output_path(&self, spec_path: &Path, output: Option<&Path>) -> PathBuf {
        match (output, &self.output) {
            (Some(o), _) => o.to_path_buf(),
            (None, Some(o)) => base_dir(spec_path).join(o),
            (None, None) => PathBuf::from(format!(
                "{}.img",
                spec_path
                    .file_stem()
                    .map_or("image".into(), |s| s.to_string_lossy())
            )),
        }
    }

    /// The fixed time of a reproducible build: SOURCE_DATE_EPOCH, else the SPEC's `epoch`
    /// (or FAT's earliest time) when it asks to be reproducible; None otherwise.
    pub(super) fn epoch(&self) -> Outcome<Option<u64>> {
        let env_epoch = crate::util::source_date_epoch()?;
        Ok(env_epoch.or(if self.reproducible || self.epoch.is_some() {
            Some(self.epoch.unwrap_or(FAT_EPOCH))
        } else {
            None
        }))
    }
}

/// The directory SPEC paths are relative to.
pub(super) fn base_dir(spec_path: &Path) -> PathBuf {
    spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}
