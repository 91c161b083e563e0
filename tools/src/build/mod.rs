//! `vuimg build SPEC`: a whole image from one TOML file.
//!
//! Everything is planned and checked before the first write (sizes, types,
//! that the partitions fit, filesystem parameters, that every source exists
//! and the contents fit by an estimate); the image is then built in a
//! temporary file next to the output and renamed over it at the end, so a
//! failure leaves the old image untouched.

mod plan;
mod raw;
mod report;
mod spec;
mod write;

use crate::util::Outcome;
use std::path::Path;

/// Help for `vuimg build`.
pub const SPEC_HELP: &str = r#"SPEC (TOML):
  size = "512M"              # image size
  table = "mbr"              # mbr or gpt
  id = "0x5eed0001"          # optional MBR id / GPT disk GUID
  reproducible = true        # fix ids, serials and times (also: SOURCE_DATE_EPOCH)
  epoch = 1700000000         # the fixed time (default: SOURCE_DATE_EPOCH, else 1980-01-01)
  output = "card.img"        # default output, relative to the SPEC
  hybrid_mbr = [1]           # GPT: also list these (1-3) in the MBR (mbr_type = "0c")
  fill = true                # allocate every byte of a raw output (no holes)
  raw = [ { file = "u-boot.bin", offset = "8K" } ]   # outside the table and partitions

  [[partition]]
  type = "fat32"             # by name (linux, fat32, efi, swap, ...), hex or GUID
  size = "128M"              # or "rest" (the default): the free space left
  name = "boot"              # GPT name (also usable as IMAGE@boot)
  bootable = true
  fs = "fat32"               # fat, fat12, fat16, fat32, exfat, ext2, ext4 or none
  label = "BOOT"
  cluster_size = "4K"        # FAT and exFAT; ext takes block_size = 4096
  offset = "4M"              # start (bytes from the disk's start); or align = "4M"
  uuid = "..."               # GPT partition GUID; fs_uuid = "..." the ext UUID
  volume_id = "0x1234abcd"   # FAT/exFAT serial
  features = ["^metadata_csum"]  # mke2fs -O
  logical = true             # MBR logical (after a type = "extended" partition)
  image = "boot.vfat"        # or: fill from an image file (no fs, no contents)
  contents = [
    { from = "sample/boot", to = "/" },        # a host directory's contents
    { from = "kernel.img", to = "/kernel.img" },  # one file
    { text = "hello\n", to = "/motd", mode = "0644" },  # inline text
  ]

Paths in the SPEC are relative to the SPEC's directory. ext filesystems are
made by running mke2fs (e2fsprogs); FAT is written in process. Files are owned
by root (0:0); times are kept (clamped to the epoch when reproducible).

EXAMPLES:
  vuimg build images/rpi.toml -o card.img
  SOURCE_DATE_EPOCH=1700000000 vuimg build images/efi.toml -o efi.img
  vuimg build --dry-run --json images/rpi.toml   # the plan as JSON, nothing written"#;

/// `vuimg build`: load and check the SPEC, plan every partition, then either show the plan
/// (`--dry-run`) or write the image.
pub fn build(spec_path: &Path, output: Option<&Path>, dry_run: bool, json: bool) -> Outcome {
    let spec = spec::Spec::load(spec_path)?;
    let output = spec.output_path(spec_path, output);
    let epoch = spec.epoch()?;
    let plan = plan::plan(&spec, spec_path, epoch)?;
    if dry_run {
        return report::show(&plan, &output, json);
    }
    write::write(&plan, &output)
}
