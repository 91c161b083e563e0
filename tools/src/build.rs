//! `vuimg build SPEC`: a whole image from one TOML file.
//!
//! Everything is planned and checked before the first write (sizes, types,
//! that the partitions fit, filesystem parameters, that every source exists
//! and the contents fit by an estimate); the image is then built in a
//! temporary file next to the output and renamed over it at the end, so a
//! failure leaves the old image untouched.

use crate::copy::{self, Item, MetaPolicy, Origin};
use crate::fail;
use crate::format::{self as fmt, FormatRequest, FsType};
use crate::progress::{note, Progress};
use crate::util::{epoch_time, parse_bytes, IdSource, Outcome};
use crate::volume::{FsKind, Meta, Volume};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vudev::part::{self, NewPartition, PartType, PartitionTable};
use vudev::{BlockDevice, FileDevice, Window};
use vufuse_api::Ino;

/// Help for `vuimg build`.
pub const SPEC_HELP: &str = r#"SPEC (TOML):
  size = "512M"              # image size
  table = "mbr"              # mbr or gpt
  id = "0x5eed0001"          # optional MBR id / GPT disk GUID
  reproducible = true        # fix ids, serials and times (also: SOURCE_DATE_EPOCH)
  epoch = 1700000000         # the fixed time (default: SOURCE_DATE_EPOCH, else 1980-01-01)
  output = "card.img"        # default output, relative to the SPEC

  [[partition]]
  type = "fat32"             # by name (linux, fat32, efi, swap, ...), hex or GUID
  size = "128M"              # or "rest" (the default): the free space left
  name = "boot"              # GPT name (also usable as IMAGE@boot)
  bootable = true
  fs = "fat32"               # fat, fat12, fat16, fat32, ext2, ext4 or none
  label = "BOOT"
  cluster_size = "4K"        # FAT; ext takes block_size = 4096
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

/// A size written as a string ("4K") or a bare number of bytes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl SizeText {
    fn text(&self) -> String {
        match self {
            SizeText::Bytes(n) => n.to_string(),
            SizeText::Text(t) => t.clone(),
        }
    }
}

fn opt_text(v: &Option<SizeText>) -> Option<String> {
    v.as_ref().map(SizeText::text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    size: SizeText,
    table: String,
    id: Option<String>,
    #[serde(default)]
    reproducible: bool,
    epoch: Option<u64>,
    output: Option<String>,
    #[serde(default, rename = "partition")]
    partitions: Vec<PartSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartSpec {
    #[serde(rename = "type")]
    ptype: Option<String>,
    size: Option<SizeText>,
    name: Option<String>,
    #[serde(default)]
    bootable: bool,
    fs: Option<String>,
    label: Option<String>,
    cluster_size: Option<SizeText>,
    block_size: Option<SizeText>,
    #[serde(default)]
    contents: Vec<Content>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Content {
    from: Option<String>,
    text: Option<String>,
    to: String,
    mode: Option<String>,
}

/// One partition, fully decided.
struct PlannedPart {
    number: u32,
    what: String,
    start_sector: u64,
    bytes: u64,
    fs: Option<FsType>,
    req: FormatRequest,
    items: Vec<Item>,
}

/// Deletes the temporary image unless the build got to the end.
struct TempImage {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// 1980-01-01, the earliest time FAT can store.
const FAT_EPOCH: u64 = 315_532_800;

/// `vuimg build`.
pub fn build(spec_path: &Path, output: Option<&Path>, dry_run: bool, json: bool) -> Outcome {
    let text =
        std::fs::read_to_string(spec_path).map_err(|e| fail!("{}: {e}", spec_path.display()))?;
    let spec: Spec = toml::from_str(&text).map_err(|e| fail!("{}: {e}", spec_path.display()))?;
    let base = spec_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let output = match (output, &spec.output) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(o)) => base.join(o),
        (None, None) => PathBuf::from(format!(
            "{}.img",
            spec_path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy())
        )),
    };
    let name = spec_path.display().to_string();
    let env_epoch = crate::util::source_date_epoch()?;
    let epoch = env_epoch.or(if spec.reproducible || spec.epoch.is_some() {
        Some(spec.epoch.unwrap_or(FAT_EPOCH))
    } else {
        None
    });
    let mut ids = epoch.map(IdSource::new);
    let mut random_or_fixed_u64 = move || match ids.as_mut() {
        Some(i) => i.next_u64(),
        None => uuid::Uuid::new_v4().as_u128() as u64,
    };

    // The table.
    let size_text = spec.size.text();
    let size = parse_bytes(&size_text).map_err(|e| fail!("{name}: size: {}", e.0))?;
    if size % 512 != 0 || size < 2 << 20 {
        return Err(fail!(
            "{name}: size {} must be a multiple of 512 bytes and at least 2M",
            size_text
        ));
    }
    let gpt = match spec.table.to_ascii_lowercase().as_str() {
        "mbr" | "dos" => false,
        "gpt" => true,
        other => return Err(fail!("{name}: table {other:?} is not mbr or gpt")),
    };
    let mut table = if gpt {
        let guid = match &spec.id {
            Some(t) => {
                uuid::Uuid::parse_str(t).map_err(|_| fail!("{name}: id {t:?} is not a GUID"))?
            }
            None => seeded_uuid(&mut random_or_fixed_u64),
        };
        PartitionTable::new_gpt(size, 512, guid)
    } else {
        let id = match &spec.id {
            Some(t) => u32::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| fail!("{name}: id {t:?} is not a 32-bit hex number"))?,
            None => random_or_fixed_u64() as u32,
        };
        PartitionTable::new_mbr(size, 512, id)
    }
    .map_err(|e| fail!("{name}: {e}"))?;

    let mut planned = Vec::new();
    for (i, ps) in spec.partitions.iter().enumerate() {
        let what = format!(
            "partition {}{}",
            i + 1,
            ps.name
                .as_ref()
                .or(ps.label.as_ref())
                .map_or(String::new(), |n| format!(" ({n})"))
        );
        let ctx = |m: String| fail!("{name}: {what}: {m}");
        let fs = match ps.fs.as_deref() {
            None | Some("none") => None,
            Some(f) => Some(FsType::parse(f).map_err(|e| ctx(e.0))?),
        };
        let type_name = ps.ptype.clone().unwrap_or_else(|| {
            match (fs, gpt) {
                (Some(FsType::Fat12), false) => "fat12",
                (Some(FsType::Fat16), false) => "fat16",
                (Some(f), false) if f.is_fat() => "fat32",
                (Some(f), true) if f.is_fat() => "basic-data",
                _ => "linux",
            }
            .to_string()
        });
        let ptype = PartType::parse(&type_name, gpt).map_err(ctx)?;
        let size_spec = opt_text(&ps.size);
        let sectors = match size_spec.as_deref() {
            None | Some("rest") => None,
            Some(s) => {
                let b = parse_bytes(s).map_err(|e| ctx(e.0))?;
                if b % 512 != 0 {
                    return Err(ctx(format!("size {s} is not a multiple of 512 bytes")));
                }
                Some(b / 512)
            }
        };
        if !gpt && ps.name.is_some() {
            return Err(ctx(
                "MBR partitions have no names (use table = \"gpt\")".into()
            ));
        }
        let number = table
            .add(NewPartition {
                number: None,
                start: None,
                sectors,
                ptype,
                name: ps.name.clone().unwrap_or_default(),
                bootable: ps.bootable,
                logical: false,
                uuid: gpt.then(|| seeded_uuid(&mut random_or_fixed_u64)),
            })
            .map_err(|e| {
                ctx(format!(
                    "{} does not fit in the {} image: {e}",
                    size_spec.as_deref().unwrap_or("the rest"),
                    size_text
                ))
            })?;
        let p = table.get(number).expect("just added").clone();
        let bytes = p.sectors * 512;
        let unit = match (fs, &opt_text(&ps.cluster_size), &opt_text(&ps.block_size)) {
            (Some(f), Some(c), _) if f.is_fat() => Some(fmt::parse_unit(c).map_err(|e| ctx(e.0))?),
            (Some(f), _, Some(b)) if !f.is_fat() => Some(fmt::parse_unit(b).map_err(|e| ctx(e.0))?),
            (_, None, None) => None,
            _ => return Err(ctx("cluster_size is for FAT, block_size for ext".into())),
        };
        let serial = random_or_fixed_u64() as u32;
        let req = FormatRequest {
            label: ps.label.clone(),
            unit,
            epoch,
            serial: Some(serial),
            uuid: epoch.map(|_| seeded_uuid(&mut random_or_fixed_u64)),
        };
        // Filesystem parameters and contents, checked now.
        let mut items = Vec::new();
        for c in &ps.contents {
            plan_content(c, &base, &mut items).map_err(|e| ctx(e.0))?;
        }
        let capacity = match fs {
            Some(f) if f.is_fat() => {
                let opts = vufuse_fat::format::FormatOptions {
                    fat_type: None,
                    cluster_size: unit,
                    label: ps.label.clone(),
                    ..Default::default()
                };
                let forced = match f {
                    FsType::Fat12 => Some(vufuse_fat::bpb::FatType::Fat12),
                    FsType::Fat16 => Some(vufuse_fat::bpb::FatType::Fat16),
                    FsType::Fat32 => Some(vufuse_fat::bpb::FatType::Fat32),
                    _ => None,
                };
                let layout = vufuse_fat::format::layout_for(
                    bytes,
                    &vufuse_fat::format::FormatOptions {
                        fat_type: forced,
                        ..opts
                    },
                )
                .map_err(|e| ctx(e.message))?;
                let unit = layout.cluster_size as u64;
                Some((
                    layout.clusters as u64 * unit,
                    copy::space_needed(&items, unit, FsKind::Fat),
                ))
            }
            Some(_) => {
                fmt::check_ext(bytes, &req).map_err(|e| ctx(e.0))?;
                let unit = unit.unwrap_or(if bytes < 512 << 20 { 1024 } else { 4096 }) as u64;
                // Inode tables (one 256-byte inode per 4-16 KiB) and the journal.
                let ratio = if bytes < 512 << 20 { 4096 } else { 16384 };
                let journal = (bytes / 64).min(128 << 20);
                let usable = bytes.saturating_sub(bytes / ratio * 256 + journal + (bytes / 50));
                Some((usable, copy::space_needed(&items, unit, FsKind::Ext)))
            }
            None => {
                if !items.is_empty() {
                    return Err(ctx("has contents but no filesystem (set fs)".into()));
                }
                None
            }
        };
        if let Some((usable, needed)) = capacity {
            if needed > usable {
                return Err(ctx(format!(
                    "contents need about {} but the filesystem will hold about {}",
                    crate::util::human(needed),
                    crate::util::human(usable)
                )));
            }
        }
        planned.push(PlannedPart {
            number,
            what,
            start_sector: p.start,
            bytes,
            fs,
            req,
            items,
        });
    }
    if dry_run && json {
        let parts: Vec<serde_json::Value> = planned
            .iter()
            .map(|p| {
                serde_json::json!({
                    "number": p.number,
                    "start": p.start_sector,
                    "size": p.bytes / 512,
                    "type": table.get(p.number).map(|t| t.ptype.sfdisk_string()),
                    "fs": p.fs.map(|f| format!("{f:?}").to_lowercase()),
                    "label": p.req.label,
                    "files": p.items.len(),
                    "bytes": copy::total_bytes(&p.items),
                })
            })
            .collect();
        let plan = serde_json::json!({
            "output": output.display().to_string(),
            "size": size,
            "table": if gpt { "gpt" } else { "dos" },
            "reproducible": epoch.is_some(),
            "partitions": parts,
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    if dry_run {
        for p in &planned {
            println!(
                "{}: sectors {}+{} {} {} files, {}",
                p.what,
                p.start_sector,
                p.bytes / 512,
                p.fs.map_or("no filesystem".to_string(), |f| format!("{f:?}")
                    .to_lowercase()),
                p.items.len(),
                crate::util::human(copy::total_bytes(&p.items))
            );
        }
        return Ok(());
    }

    // Build into a temporary file beside the output.
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = output
        .file_name()
        .ok_or_else(|| fail!("{}: not a file name", output.display()))?;
    let temp = TempImage {
        path: dir.join(format!(
            ".{}.vuimg-{}",
            file_name.to_string_lossy(),
            std::process::id()
        )),
        keep: false,
    };
    {
        let f =
            std::fs::File::create(&temp.path).map_err(|e| fail!("{}: {e}", temp.path.display()))?;
        f.set_len(size)
            .map_err(|e| fail!("{}: {e}", temp.path.display()))?;
    }
    let disk: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&temp.path, false).map_err(|e| fail!("{}: {e}", temp.path.display()))?,
    );
    part::write(disk.as_ref(), &table).map_err(|e| fail!("{}: {e}", output.display()))?;
    let total: u64 = planned.iter().map(|p| copy::total_bytes(&p.items)).sum();
    let mut progress = Progress::new("building", total);
    let policy = MetaPolicy {
        clamp: epoch.map(epoch_time),
        owner: Some((0, 0)),
    };
    for p in &planned {
        let Some(fs) = p.fs else { continue };
        let ctx = |m: String| fail!("{name}: {}: {m}", p.what);
        let offset = p.start_sector * 512;
        let window: Arc<dyn BlockDevice> =
            Arc::new(Window::new(disk.clone(), offset, p.bytes).map_err(|e| ctx(e.to_string()))?);
        progress.set_message(&p.what);
        if fs.is_fat() {
            fmt::format_fat(window.as_ref(), fs, p.start_sector, &p.req).map_err(|e| ctx(e.0))?;
        } else {
            disk.flush().map_err(|e| ctx(e.to_string()))?;
            fmt::format_ext(&temp.path, offset, p.bytes, fs, &p.req).map_err(|e| ctx(e.0))?;
        }
        if p.items.is_empty() && epoch.is_none() {
            continue;
        }
        let vol = Volume::open(
            window.clone(),
            true,
            &format!("{}@{}", output.display(), p.number),
        )?;
        let filled = (|| -> Outcome {
            copy::check_fits(&vol, &p.items)?;
            copy::into_volume(&p.items, None, &vol, policy, &mut progress)?;
            if let Some(t) = policy.clamp {
                if vol.kind == FsKind::Ext {
                    let root = Meta {
                        perm: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: t,
                        atime: t,
                    };
                    vol.set_meta(Ino::ROOT, &root, "/")?;
                }
            }
            Ok(())
        })();
        let touched = vol.touched_inodes();
        let kind = vol.kind;
        vol.close();
        filled.map_err(|e| ctx(e.0))?;
        if let Some(e) = epoch {
            match kind {
                FsKind::Fat => crate::repro::clamp_fat_times(window, e).map_err(|e| ctx(e.0))?,
                FsKind::Ext => {
                    disk.flush().map_err(|e| ctx(e.to_string()))?;
                    crate::repro::fix_ext_times(&temp.path, offset, &touched, e)
                        .map_err(|e| ctx(e.0))?
                }
            }
        }
    }
    progress.finish();
    disk.flush()
        .map_err(|e| fail!("{}: {e}", temp.path.display()))?;
    drop(disk);
    let mut temp = temp;
    std::fs::rename(&temp.path, &output).map_err(|e| fail!("{}: {e}", output.display()))?;
    temp.keep = true;
    note(&format!(
        "{}: {} image with {} partitions{}",
        output.display(),
        crate::util::human(size),
        planned.len(),
        if epoch.is_some() {
            " (reproducible)"
        } else {
            ""
        }
    ));
    Ok(())
}

fn seeded_uuid(next: &mut impl FnMut() -> u64) -> uuid::Uuid {
    let value = (next() as u128) << 64 | next() as u128;
    uuid::Builder::from_random_bytes(value.to_be_bytes()).into_uuid()
}

fn plan_content(c: &Content, base: &Path, items: &mut Vec<Item>) -> Outcome {
    if !c.to.starts_with('/') {
        return Err(fail!("content destination {:?} must be absolute", c.to));
    }
    let to = crate::address::normalize(&c.to);
    let perm = match &c.mode {
        Some(m) => Some(
            u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| fail!("mode {m:?} is not octal permission bits"))?,
        ),
        None => None,
    };
    match (&c.from, &c.text) {
        (Some(from), None) => {
            let src = base.join(from);
            let md = std::fs::metadata(&src)
                .map_err(|e| fail!("content source {}: {e}", src.display()))?;
            let first = items.len();
            if md.is_dir() {
                copy::plan_host(&src, &to, true, true, items)?;
            } else {
                let dest = if c.to.ends_with('/') {
                    copy::join(&to, &src.file_name().unwrap_or_default().to_string_lossy())
                } else {
                    to
                };
                copy::plan_host(&src, &dest, false, false, items)?;
            }
            if let Some(perm) = perm {
                for item in &mut items[first..] {
                    item.meta.perm = perm;
                }
            }
        }
        (None, Some(text)) => {
            let now = std::time::SystemTime::now();
            items.push(Item {
                dest: to,
                kind: copy::ItemKind::File(text.len() as u64),
                origin: Origin::Inline(text.as_bytes().to_vec()),
                meta: Meta {
                    perm: perm.unwrap_or(0o644),
                    uid: 0,
                    gid: 0,
                    mtime: now,
                    atime: now,
                },
            });
        }
        _ => {
            return Err(fail!(
                "content for {:?} needs exactly one of from or text",
                c.to
            ))
        }
    }
    Ok(())
}
