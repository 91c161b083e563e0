//! Image files and partition tables: create, grow, part new/add/del/resize/set/list.

use crate::cli::{Label, PartCommand};
use crate::util::{human, parse_bytes, Failure, Outcome};
use std::path::Path;
use vudev::part::{self, NewPartition, PartType, PartitionTable, Scheme};
use vudev::BlockDevice;

/// The disk `image` holds (through its format), opened read-write and locked.
fn open_rw(image: &Path) -> Result<Disk, Failure> {
    Disk::open(image, false)
}

/// A disk image opened for table work: the device (through its format) and its path.
pub struct Disk {
    device: std::sync::Arc<dyn BlockDevice>,
    path: std::path::PathBuf,
}

impl Disk {
    /// Opens `image` locked (shared when `read_only`), through its format.
    pub fn open(image: &Path, read_only: bool) -> Result<Disk, Failure> {
        Ok(Disk {
            device: crate::image_lock::open_disk(image, read_only)?,
            path: image.to_path_buf(),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for Disk {
    type Target = dyn BlockDevice;
    fn deref(&self) -> &Self::Target {
        self.device.as_ref()
    }
}

/// The partition table of an image, warnings printed.
/// Fails if partition `number` holds a filesystem longer than `sectors`: shrinking it would
/// cut the filesystem off (`--force` does it anyway).
fn refuse_cutting_a_filesystem(
    dev: &Disk,
    table: &PartitionTable,
    number: u32,
    sectors: u64,
) -> Result<(), Failure> {
    let Some(p) = table.partitions.iter().find(|p| p.number == number) else {
        return Ok(()); // resize names the missing partition itself
    };
    let unit = table.sector_size as u64;
    let (start, len) = (p.start * unit, p.sectors * unit);
    let Some(fs) = crate::fs_extent::filesystem_extent(dev.device.clone(), start, len) else {
        return Ok(());
    };
    let new_bytes = sectors * unit;
    if new_bytes >= fs.bytes {
        return Ok(());
    }
    Err(Failure(format!(
        "{}: partition {number} holds {} of {}; {} would cut it off (shrink the filesystem \
         first{}, or use --force); the table is unchanged",
        dev.path().display(),
        fs.kind,
        crate::util::human(fs.bytes),
        crate::util::human(new_bytes),
        if fs.kind.starts_with("ext") {
            " with resize2fs"
        } else {
            ""
        }
    )))
}

pub fn read_table(dev: &Disk) -> Result<PartitionTable, Failure> {
    let table = part::probe(&**dev)
        .map_err(|e| Failure(format!("{}: {e}", dev.path().display())))?
        .ok_or_else(|| {
            Failure(format!(
                "{}: no partition table (create one with `vuimg part new`)",
                dev.path().display()
            ))
        })?;
    for w in &table.warnings {
        eprintln!("vuimg: warning: {}: {w}", dev.path().display());
    }
    Ok(table)
}

fn sectors_of(table: &PartitionTable, size: &str) -> Result<u64, Failure> {
    let bytes = parse_bytes(size)?;
    let ss = table.sector_size as u64;
    if bytes % ss != 0 {
        return Err(Failure(format!(
            "size {size} is not a multiple of the {ss}-byte sector"
        )));
    }
    Ok(bytes / ss)
}

/// `vuimg grow`.
pub fn grow(image: &Path, size: &str) -> Outcome {
    let bytes = parse_bytes(size)?;
    crate::images::create::refuse_non_raw(image, "grow")?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| Failure(format!("{}: {e}", image.display())))?;
    let current = file.metadata()?.len();
    if bytes < current {
        return Err(Failure(format!(
            "{}: is {current} bytes; grow never shrinks",
            image.display()
        )));
    }
    file.set_len(bytes)?;
    Ok(())
}

/// `vuimg part ...`.
pub fn part_command(cmd: PartCommand) -> Outcome {
    match cmd {
        PartCommand::New { image, label, id } => part_new(&image, label, id),
        PartCommand::Add(args) => part_add(args),
        PartCommand::Del { image, number } => part_del(&image, number),
        PartCommand::Resize {
            image,
            number,
            size,
            force,
        } => part_resize(&image, number, &size, force),
        PartCommand::Set {
            image,
            number,
            ptype,
            name,
            bootable,
            no_bootable,
        } => part_set(
            &image,
            number,
            ptype,
            name,
            (bootable || no_bootable).then_some(bootable),
        ),
        PartCommand::List { image, json } => part_list(&image, json),
    }
}

/// `vuimg part new`: writes an empty table of `label`, its disk id `id` or a random one.
fn part_new(image: &Path, label: Label, id: Option<String>) -> Outcome {
    let dev = open_rw(image)?;
    let table = match label {
        Label::Mbr => PartitionTable::new_mbr(dev.size(), dev.sector_size(), mbr_id(id)?)?,
        Label::Gpt => PartitionTable::new_gpt(dev.size(), dev.sector_size(), disk_guid(id)?)?,
    };
    part::write(&*dev, &table)?;
    Ok(())
}

/// The MBR disk id given in hex (`0x` optional), or a random one.
fn mbr_id(id: Option<String>) -> Result<u32, Failure> {
    match id {
        Some(text) => u32::from_str_radix(text.trim_start_matches("0x"), 16)
            .map_err(|_| Failure(format!("MBR id {text:?} is not a 32-bit hex number"))),
        None => Ok(uuid::Uuid::new_v4().as_u128() as u32),
    }
}

/// The GPT disk GUID given, or a random one.
fn disk_guid(id: Option<String>) -> Result<uuid::Uuid, Failure> {
    match id {
        Some(text) => {
            uuid::Uuid::parse_str(&text).map_err(|_| Failure(format!("GUID {text:?} is invalid")))
        }
        None => Ok(uuid::Uuid::new_v4()),
    }
}

/// `vuimg part add`: adds the partition and prints its number.
fn part_add(args: crate::cli::AddArgs) -> Outcome {
    let dev = open_rw(&args.image)?;
    let mut table = read_table(&dev)?;
    let gpt = table.scheme == Scheme::Gpt;
    let spec = NewPartition {
        number: args.number,
        start: args.start,
        sectors: args
            .size
            .as_deref()
            .map(|s| sectors_of(&table, s))
            .transpose()?,
        ptype: PartType::parse(&args.ptype, gpt).map_err(Failure)?,
        name: args.name,
        bootable: args.bootable,
        logical: args.logical,
        uuid: None,
    };
    let number = table.add(spec)?;
    part::write(&*dev, &table)?;
    crate::outln!("{number}")?;
    Ok(())
}

/// `vuimg part del`.
fn part_del(image: &Path, number: u32) -> Outcome {
    let dev = open_rw(image)?;
    let mut table = read_table(&dev)?;
    table.delete(number)?;
    part::write(&*dev, &table)?;
    Ok(())
}

/// `vuimg part resize`: to `size`, or to fill the free space after it (`max`); refuses to
/// cut off a filesystem unless `force`.
fn part_resize(image: &Path, number: u32, size: &str, force: bool) -> Outcome {
    let dev = open_rw(image)?;
    let mut table = read_table(&dev)?;
    if size == "max" {
        table.grow_to_fill(number)?;
    } else {
        let sectors = sectors_of(&table, size)?;
        if !force {
            refuse_cutting_a_filesystem(&dev, &table, number, sectors)?;
        }
        table.resize(number, sectors)?;
    }
    part::write(&*dev, &table)?;
    Ok(())
}

/// `vuimg part set`: the type, name and boot flag given (`bootable` None: unchanged).
fn part_set(
    image: &Path,
    number: u32,
    ptype: Option<String>,
    name: Option<String>,
    bootable: Option<bool>,
) -> Outcome {
    let dev = open_rw(image)?;
    let mut table = read_table(&dev)?;
    if let Some(t) = ptype {
        let parsed = PartType::parse(&t, table.scheme == Scheme::Gpt).map_err(Failure)?;
        table.set_type(number, parsed)?;
    }
    if let Some(n) = name {
        table.set_name(number, &n)?;
    }
    if let Some(on) = bootable {
        table.set_bootable(number, on)?;
    }
    part::write(&*dev, &table)?;
    Ok(())
}

/// `vuimg part list`: the table as text, or as `sfdisk --json` does.
fn part_list(image: &Path, json: bool) -> Outcome {
    let dev = Disk::open(image, true)?;
    let table = read_table(&dev)?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&sfdisk_json(&table, image))?
        )?;
    } else {
        print_table(&table, image)?;
    }
    Ok(())
}

/// The table in the shape of `sfdisk --json`.
pub fn sfdisk_json(table: &PartitionTable, image: &Path) -> serde_json::Value {
    use serde_json::json;
    let device = image.display().to_string();
    let partitions: Vec<serde_json::Value> = table
        .partitions
        .iter()
        .map(|p| {
            let mut v = json!({
                "node": format!("{device}{}", p.number),
                "start": p.start,
                "size": p.sectors,
                "type": p.ptype.sfdisk_string(),
            });
            match table.scheme {
                Scheme::Mbr => {
                    if p.bootable {
                        v["bootable"] = json!(true);
                    }
                }
                Scheme::Gpt => {
                    if let Some(u) = p.uuid {
                        v["uuid"] = json!(u.hyphenated().to_string().to_ascii_uppercase());
                    }
                    if !p.name.is_empty() {
                        v["name"] = json!(p.name);
                    }
                    if p.bootable {
                        v["attrs"] = json!("LegacyBIOSBootable");
                    }
                }
            }
            v
        })
        .collect();
    let mut t = json!({
        "label": table.scheme.sfdisk_label(),
        "device": device,
        "unit": "sectors",
        "sectorsize": table.sector_size,
        "partitions": partitions,
    });
    match table.scheme {
        Scheme::Mbr => t["id"] = json!(format!("0x{:08x}", table.mbr_id)),
        Scheme::Gpt => {
            t["id"] = json!(table
                .disk_guid
                .unwrap_or_default()
                .hyphenated()
                .to_string()
                .to_ascii_uppercase());
            t["firstlba"] = json!(table.usable.0);
            t["lastlba"] = json!(table.usable.1);
        }
    }
    json!({ "partitiontable": t })
}

fn print_table(table: &PartitionTable, image: &Path) -> Outcome {
    let ss = table.sector_size as u64;
    crate::outln!(
        "{}: {} table, {} sectors of {} bytes",
        image.display(),
        table.scheme.sfdisk_label(),
        table.disk_sectors,
        ss
    )?;
    crate::outln!(
        "{:>4} {:>12} {:>12} {:>10} {:>4}  {:<28} name",
        "#",
        "start",
        "sectors",
        "size",
        "boot",
        "type"
    )?;
    for p in &table.partitions {
        crate::outln!(
            "{:>4} {:>12} {:>12} {:>10} {:>4}  {:<28} {}",
            p.number,
            p.start,
            p.sectors,
            human(p.sectors * ss),
            if p.bootable { "*" } else { "" },
            p.ptype.to_string(),
            p.name
        )?;
    }
    Ok(())
}
