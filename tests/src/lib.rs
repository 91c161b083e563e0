//! Shared fixtures for the integration tests: running the real tools of the
//! field (sfdisk, sgdisk, mkfs, fsck, mtools) and comparing what they see with
//! what this project reads or writes.

use std::path::{Path, PathBuf};
use vudev::part::{PartType, PartitionTable, Scheme};

pub use testkit::{run, run_ok, sh};

/// Creates a sparse file of `bytes` bytes at `dir/name`.
pub fn sparse_image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(bytes).unwrap();
    path
}

/// One partition as `sfdisk --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfdiskPartition {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub ptype: String,
    pub bootable: bool,
    pub name: String,
    pub uuid: Option<String>,
}

/// What `sfdisk --json` says about an image: label, disk id and partitions.
#[derive(Debug, Clone)]
pub struct SfdiskTable {
    pub label: String,
    pub id: String,
    pub sector_size: u32,
    pub partitions: Vec<SfdiskPartition>,
}

/// Parses `sfdisk --json IMAGE`.
pub fn sfdisk_json(image: &Path) -> SfdiskTable {
    let text = run_ok("sfdisk", &["--json", image.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("sfdisk --json output");
    let t = &json["partitiontable"];
    let device = t["device"].as_str().unwrap().to_string();
    let partitions = t["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    let node = p["node"].as_str().unwrap();
                    let attrs = p["attrs"].as_str().unwrap_or("");
                    SfdiskPartition {
                        number: node[device.len()..]
                            .trim_start_matches('p')
                            .parse()
                            .unwrap(),
                        start: p["start"].as_u64().unwrap(),
                        size: p["size"].as_u64().unwrap(),
                        ptype: p["type"].as_str().unwrap().to_string(),
                        bootable: p["bootable"].as_bool().unwrap_or(false)
                            || attrs.contains("LegacyBIOSBootable"),
                        name: p["name"].as_str().unwrap_or("").to_string(),
                        uuid: p["uuid"].as_str().map(str::to_string),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    SfdiskTable {
        label: t["label"].as_str().unwrap().to_string(),
        id: t["id"].as_str().unwrap_or("").to_string(),
        sector_size: t["sectorsize"].as_u64().unwrap_or(512) as u32,
        partitions,
    }
}

/// Our table in sfdisk's vocabulary, for field-by-field comparison.
pub fn as_sfdisk(table: &PartitionTable) -> Vec<SfdiskPartition> {
    table
        .partitions
        .iter()
        .map(|p| SfdiskPartition {
            number: p.number,
            start: p.start,
            size: p.sectors,
            ptype: p.ptype.sfdisk_string(),
            bootable: p.bootable,
            name: p.name.clone(),
            uuid: p
                .uuid
                .map(|u| u.hyphenated().to_string().to_ascii_uppercase()),
        })
        .collect()
}

/// Asserts that our reading of a table equals sfdisk's in every field.
pub fn assert_same_as_sfdisk(table: &PartitionTable, image: &Path) {
    let theirs = sfdisk_json(image);
    let label = match table.scheme {
        Scheme::Mbr => "dos",
        Scheme::Gpt => "gpt",
    };
    assert_eq!(theirs.label, label, "label");
    assert_eq!(theirs.sector_size, table.sector_size, "sector size");
    match table.scheme {
        Scheme::Mbr => assert_eq!(theirs.id, format!("0x{:08x}", table.mbr_id), "disk id"),
        Scheme::Gpt => assert_eq!(
            theirs.id,
            table
                .disk_guid
                .unwrap()
                .hyphenated()
                .to_string()
                .to_ascii_uppercase(),
            "disk guid"
        ),
    }
    assert_eq!(
        as_sfdisk(table),
        theirs.partitions,
        "partitions differ from sfdisk --json"
    );
}

/// `sfdisk --verify` must report no problem.
pub fn assert_sfdisk_verify_clean(image: &Path) {
    let out = run("sfdisk", &["--verify", image.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sfdisk --verify failed: {text}");
    assert!(
        text.contains("No errors detected"),
        "sfdisk --verify complained: {text}"
    );
}

/// `sgdisk -v` must find no problems.
pub fn assert_sgdisk_verify_clean(image: &Path) {
    let out = run("sgdisk", &["-v", image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("No problems found"),
        "sgdisk -v: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Shorthand for a type by name.
pub fn ptype(name: &str, gpt: bool) -> PartType {
    PartType::parse(name, gpt).unwrap()
}
