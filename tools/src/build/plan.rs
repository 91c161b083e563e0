//! Planning: the partition table and every partition decided and checked (types, sizes,
//! filesystem parameters, sources, an estimate that the contents fit) before any write.

use super::spec::{base_dir, opt_text, Content, PartSpec, Spec};
use crate::copy::{self, Item, Origin};
use crate::fail;
use crate::format::{self as fmt, FormatRequest, FsType};
use crate::util::{parse_bytes, Failure, IdSource, Outcome};
use crate::volume::{FsKind, Meta};
use std::path::{Path, PathBuf};
use vudev::part::{NewPartition, PartType, PartitionTable};

/// The whole image, decided.
pub(super) struct Plan {
    /// The SPEC, as messages name it.
    pub(super) name: String,
    /// Allocate the whole raw output (no holes).
    pub(super) fill: bool,
    /// GPT partitions listed in a hybrid MBR too, with their MBR types.
    pub(super) hybrid_mbr: Vec<(u32, u8)>,
    /// Files written at fixed offsets outside the partitions.
    pub(super) raw: Vec<super::raw::RawBlob>,
    pub(super) size: u64,
    pub(super) gpt: bool,
    pub(super) table: PartitionTable,
    pub(super) parts: Vec<PlannedPart>,
    pub(super) epoch: Option<u64>,
}

/// One partition, fully decided.
pub(super) struct PlannedPart {
    pub(super) number: u32,
    pub(super) what: String,
    pub(super) start_sector: u64,
    pub(super) bytes: u64,
    pub(super) fs: Option<FsType>,
    pub(super) req: FormatRequest,
    pub(super) items: Vec<Item>,
    /// An image file whose bytes fill the partition (no filesystem made then).
    pub(super) image: Option<std::path::PathBuf>,
}

/// Disk ids, partition GUIDs, serials and UUIDs: derived from the epoch when reproducible,
/// random otherwise.
struct Ids(Option<IdSource>);

impl Ids {
    fn next_u64(&mut self) -> u64 {
        match self.0.as_mut() {
            Some(i) => i.next_u64(),
            None => uuid::Uuid::new_v4().as_u128() as u64,
        }
    }

    fn uuid(&mut self) -> uuid::Uuid {
        let value = (self.next_u64() as u128) << 64 | self.next_u64() as u128;
        uuid::Builder::from_random_bytes(value.to_be_bytes()).into_uuid()
    }
}

/// Plans the image `spec` describes: the table, then each partition in order.
pub(super) fn plan(spec: &Spec, spec_path: &Path, epoch: Option<u64>) -> Outcome<Plan> {
    let name = spec_path.display().to_string();
    let base = base_dir(spec_path);
    let mut ids = Ids(epoch.map(IdSource::new));
    let (size, gpt, mut table) = plan_table(spec, &name, &mut ids)?;
    let mut parts = Vec::new();
    for (i, ps) in spec.partitions.iter().enumerate() {
        let what = format!(
            "partition {}{}",
            i + 1,
            ps.name
                .as_ref()
                .or(ps.label.as_ref())
                .map_or(String::new(), |n| format!(" ({n})"))
        );
        let part = plan_partition(
            ps,
            &what,
            &spec.size.text(),
            gpt,
            &mut table,
            &base,
            epoch,
            &mut ids,
        )
        .map_err(|e| fail!("{name}: {what}: {}", e.0))?;
        parts.push(part);
    }
    let raw =
        super::raw::plan(&spec.raw, &base, &table, size).map_err(|e| fail!("{name}: {}", e.0))?;
    let hybrid_mbr = plan_hybrid_mbr(spec, gpt, &parts).map_err(|e| fail!("{name}: {}", e.0))?;
    Ok(Plan {
        name,
        fill: spec.fill,
        hybrid_mbr,
        raw,
        size,
        gpt,
        table,
        parts,
        epoch,
    })
}

/// The partitions a hybrid MBR lists, each with its MBR type: `mbr_type`, else the one its
/// filesystem has on MBR disks.
fn plan_hybrid_mbr(spec: &Spec, gpt: bool, parts: &[PlannedPart]) -> Outcome<Vec<(u32, u8)>> {
    if spec.hybrid_mbr.is_empty() {
        return Ok(Vec::new());
    }
    if !gpt {
        return Err(fail!("hybrid_mbr is for table = \"gpt\""));
    }
    if spec.hybrid_mbr.len() > 3 {
        return Err(fail!("hybrid_mbr lists at most three partitions"));
    }
    let mut out = Vec::new();
    for &number in &spec.hybrid_mbr {
        let index = (number as usize).checked_sub(1);
        let (ps, part) = index
            .and_then(|i| spec.partitions.get(i).zip(parts.get(i)))
            .ok_or_else(|| fail!("hybrid_mbr: no partition {number}"))?;
        let code = match &ps.mbr_type {
            Some(t) => u8::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| fail!("mbr_type {t:?} is not a hex byte"))?,
            None => match part.fs {
                Some(FsType::Fat12) => 0x01,
                Some(FsType::Fat16) => 0x0e,
                Some(FsType::ExFat) => 0x07,
                Some(f) if f.is_fat() => 0x0c,
                _ => 0x83,
            },
        };
        out.push((part.number, code));
    }
    Ok(out)
}

/// The image size and an empty table of the SPEC's kind.
fn plan_table(spec: &Spec, name: &str, ids: &mut Ids) -> Outcome<(u64, bool, PartitionTable)> {
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
    let table = if gpt {
        let guid = match &spec.id {
            Some(t) => {
                uuid::Uuid::parse_str(t).map_err(|_| fail!("{name}: id {t:?} is not a GUID"))?
            }
            None => ids.uuid(),
        };
        PartitionTable::new_gpt(size, 512, guid)
    } else {
        let id = match &spec.id {
            Some(t) => u32::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| fail!("{name}: id {t:?} is not a 32-bit hex number"))?,
            None => ids.next_u64() as u32,
        };
        PartitionTable::new_mbr(size, 512, id)
    }
    .map_err(|e| fail!("{name}: {e}"))?;
    Ok((size, gpt, table))
}

/// One partition: its table entry (added to `table`), filesystem request and contents.
#[allow(clippy::too_many_arguments)]
fn plan_partition(
    ps: &PartSpec,
    what: &str,
    image_size: &str,
    gpt: bool,
    table: &mut PartitionTable,
    base: &Path,
    epoch: Option<u64>,
    ids: &mut Ids,
) -> Outcome<PlannedPart> {
    let fs = match ps.fs.as_deref() {
        None | Some("none") => None,
        Some(f) => Some(FsType::parse(f)?),
    };
    let ptype = partition_type(ps, fs, gpt)?;
    let image = plan_image_fill(ps, base, fs.is_some())?;
    let sectors = partition_sectors(ps, &image)?;
    let number = add_table_entry(ps, gpt, ptype, sectors, image_size, table, ids)?;
    let p = table.get(number).expect("just added").clone();
    let bytes = p.sectors * 512;
    let req = format_request(ps, fs, epoch, ids)?;
    let mut items = Vec::new();
    for c in &ps.contents {
        plan_content(c, base, &mut items)?;
    }
    check_capacity(fs, bytes, req.unit, &req, &items, &ps.label)?;
    Ok(PlannedPart {
        number,
        what: what.to_string(),
        start_sector: p.start,
        bytes,
        fs,
        req,
        items,
        image: image.map(|(path, _)| path),
    })
}

/// The partition's type: as given, else what its filesystem and the table kind call for.
fn partition_type(ps: &PartSpec, fs: Option<FsType>, gpt: bool) -> Outcome<PartType> {
    let type_name = ps.ptype.clone().unwrap_or_else(|| {
        match (fs, gpt) {
            (Some(FsType::Fat12), false) => "fat12",
            (Some(FsType::Fat16), false) => "fat16",
            (Some(f), false) if f.is_fat() => "fat32",
            (Some(f), true) if f.is_fat() || f.is_exfat() => "basic-data",
            (Some(FsType::ExFat), false) => "exfat",
            _ => "linux",
        }
        .to_string()
    });
    PartType::parse(&type_name, gpt).map_err(Failure)
}

/// The partition's length in sectors (`None`: the rest of the disk); one filled from an
/// image is the image's size unless told, and must hold it.
fn partition_sectors(ps: &PartSpec, image: &Option<(PathBuf, u64)>) -> Outcome<Option<u64>> {
    let sectors = match opt_text(&ps.size).as_deref() {
        None if image.is_some() => image.as_ref().map(|(_, len)| len.div_ceil(512)),
        None | Some("rest") => None,
        Some(s) => Some(sectors_of_bytes(s, "size")?),
    };
    if let (Some((path, len)), Some(n)) = (image, sectors) {
        if *len > n * 512 {
            return Err(fail!(
                "image {} ({}) is larger than the partition",
                path.display(),
                crate::util::human(*len)
            ));
        }
    }
    Ok(sectors)
}

/// Adds the partition to `table` (name and GUID on GPT only, its own alignment if given);
/// returns its number.
fn add_table_entry(
    ps: &PartSpec,
    gpt: bool,
    ptype: PartType,
    sectors: Option<u64>,
    image_size: &str,
    table: &mut PartitionTable,
    ids: &mut Ids,
) -> Outcome<u32> {
    if !gpt && ps.name.is_some() {
        return Err(fail!("MBR partitions have no names (use table = \"gpt\")"));
    }
    let uuid = match &ps.uuid {
        Some(_) if !gpt => return Err(fail!("MBR partitions have no GUIDs (use table = \"gpt\")")),
        Some(t) => Some(parse_uuid(t, "uuid")?),
        None => gpt.then(|| ids.uuid()),
    };
    let start = opt_text(&ps.offset)
        .map(|o| sectors_of_bytes(&o, "offset"))
        .transpose()?;
    let align = opt_text(&ps.align)
        .map(|a| sectors_of_bytes(&a, "align"))
        .transpose()?;
    if align == Some(0) {
        return Err(fail!("align must be at least 512 bytes"));
    }
    let default_align = table.align;
    table.align = align.unwrap_or(default_align);
    let added = table.add(NewPartition {
        number: None,
        start,
        sectors,
        ptype,
        name: ps.name.clone().unwrap_or_default(),
        bootable: ps.bootable,
        logical: ps.logical,
        uuid,
    });
    table.align = default_align;
    added.map_err(|e| {
        fail!(
            "{} does not fit in the {} image: {e}",
            opt_text(&ps.size).as_deref().unwrap_or("the rest"),
            image_size
        )
    })
}

/// What the filesystem is made with: label, cluster or block size, serial, UUID, features
/// (each checked against the filesystem it is for).
fn format_request(
    ps: &PartSpec,
    fs: Option<FsType>,
    epoch: Option<u64>,
    ids: &mut Ids,
) -> Outcome<FormatRequest> {
    let unit = match (fs, &opt_text(&ps.cluster_size), &opt_text(&ps.block_size)) {
        (Some(f), Some(c), _) if f.has_clusters() => Some(fmt::parse_unit(c)?),
        (Some(f), _, Some(b)) if !f.has_clusters() => Some(fmt::parse_unit(b)?),
        (_, None, None) => None,
        _ => {
            return Err(fail!(
                "cluster_size is for FAT and exFAT, block_size for ext"
            ))
        }
    };
    let serial = match &ps.volume_id {
        Some(t) => u32::from_str_radix(t.trim_start_matches("0x"), 16)
            .map_err(|_| fail!("volume_id {t:?} is not a 32-bit hex number"))?,
        None => ids.next_u64() as u32,
    };
    let fs_uuid = ps
        .fs_uuid
        .as_deref()
        .map(|t| parse_uuid(t, "fs_uuid"))
        .transpose()?;
    let is_ext = fs.is_some_and(|f| !f.has_clusters());
    if (fs_uuid.is_some() || !ps.features.is_empty()) && !is_ext {
        return Err(fail!("fs_uuid and features are for ext filesystems"));
    }
    if ps.volume_id.is_some() && !fs.is_some_and(|f| f.has_clusters()) {
        return Err(fail!("volume_id is for FAT and exFAT"));
    }
    Ok(FormatRequest {
        label: ps.label.clone(),
        unit,
        epoch,
        serial: Some(serial),
        uuid: fs_uuid.or_else(|| epoch.map(|_| ids.uuid())),
        features: ps.features.clone(),
    })
}

/// The image file a partition is filled from, with its length, if the SPEC names one.
fn plan_image_fill(
    ps: &PartSpec,
    base: &Path,
    has_fs: bool,
) -> Outcome<Option<(std::path::PathBuf, u64)>> {
    let Some(image) = &ps.image else {
        return Ok(None);
    };
    if has_fs || !ps.contents.is_empty() {
        return Err(fail!(
            "image fills the partition as it is: it takes no fs or contents"
        ));
    }
    let path = base.join(image);
    let len = std::fs::metadata(&path)
        .map_err(|e| fail!("image {}: {e}", path.display()))?
        .len();
    Ok(Some((path, len)))
}

/// A byte count of the SPEC (`what` names the field) in 512-byte sectors.
fn sectors_of_bytes(text: &str, what: &str) -> Outcome<u64> {
    let b = parse_bytes(text)?;
    if b % 512 != 0 {
        return Err(fail!("{what} {text} is not a multiple of 512 bytes"));
    }
    Ok(b / 512)
}

fn parse_uuid(text: &str, what: &str) -> Outcome<uuid::Uuid> {
    uuid::Uuid::parse_str(text).map_err(|_| fail!("{what} {text:?} is not a UUID"))
}

/// Refuses contents that will not fit the filesystem `fs` of `bytes` (an estimate from
/// the layout FAT will have, or ext's inode tables and journal).
fn check_capacity(
    fs: Option<FsType>,
    bytes: u64,
    unit: Option<u32>,
    req: &FormatRequest,
    items: &[Item],
    label: &Option<String>,
) -> Outcome {
    let capacity = match fs {
        Some(f) if f.is_fat() => {
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
                    cluster_size: unit,
                    label: label.clone(),
                    ..Default::default()
                },
            )
            .map_err(|e| Failure(e.to_string()))?;
            let unit = layout.cluster_size as u64;
            Some((
                layout.clusters as u64 * unit,
                copy::space_needed(items, unit, FsKind::Fat),
            ))
        }
        Some(FsType::ExFat) => {
            let (usable, unit) = fmt::check_exfat(bytes, req)?;
            Some((usable, copy::space_needed(items, unit, FsKind::ExFat)))
        }
        Some(_) => {
            fmt::check_ext(bytes, req)?;
            let unit = unit.unwrap_or(if bytes < 512 << 20 { 1024 } else { 4096 }) as u64;
            // Inode tables (one 256-byte inode per 4-16 KiB) and the journal.
            let ratio = if bytes < 512 << 20 { 4096 } else { 16384 };
            let journal = (bytes / 64).min(128 << 20);
            let usable = bytes.saturating_sub(bytes / ratio * 256 + journal + (bytes / 50));
            Some((usable, copy::space_needed(items, unit, FsKind::Ext)))
        }
        None => {
            if !items.is_empty() {
                return Err(fail!("has contents but no filesystem (set fs)"));
            }
            None
        }
    };
    if let Some((usable, needed)) = capacity {
        if needed > usable {
            return Err(fail!(
                "contents need about {} but the filesystem will hold about {}",
                crate::util::human(needed),
                crate::util::human(usable)
            ));
        }
    }
    Ok(())
}

/// The items one `contents` entry adds: a host directory's tree, one file, or inline text.
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
                link: None,
                xattrs: Vec::new(),
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
