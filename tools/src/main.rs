//! `vuimg`: build and edit disk images in scripts, without root or mounts.
//!
//! This first cut covers images and partition tables; filesystems and file
//! copies come with the drivers. Exit codes: 0 ok, 1 failure, 2 usage.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vudev::part::{self, NewPartition, PartType, PartitionTable, Scheme};
use vudev::{BlockDevice, FileDevice};

#[derive(Parser)]
#[command(
    name = "vuimg",
    version,
    about = "Build and edit disk images without root, loop devices or mounts",
    after_help = "EXAMPLES:\n  vuimg create disk.img 512M\n  vuimg part new disk.img mbr\n  vuimg part add disk.img fat32 --size 64M --bootable\n  vuimg part add disk.img linux\n  vuimg part list disk.img --json\n\nSizes take K, M, G or T suffixes (binary units); a bare number is bytes.\nExit status: 0 success, 1 failure (the image is left as it was), 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sparse image file of SIZE bytes (refuses to overwrite).
    Create { image: PathBuf, size: String },
    /// Grow an image file to SIZE bytes (a GPT's backup moves on the next table write).
    Grow { image: PathBuf, size: String },
    /// Partition tables: new, add, del, resize, set, list.
    #[command(subcommand)]
    Part(PartCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum Label {
    Mbr,
    Gpt,
}

#[derive(Subcommand)]
enum PartCommand {
    /// Write a new empty table, replacing any existing one.
    New {
        image: PathBuf,
        label: Label,
        /// MBR disk id (hex, e.g. 0x1234abcd) or GPT disk GUID; random by default.
        #[arg(long)]
        id: Option<String>,
    },
    /// Add a partition of TYPE (linux, fat32, efi, swap, extended, ..., a hex code or a GUID).
    Add(AddArgs),
    /// Delete partition NUMBER (later MBR logicals are renumbered, as Linux does).
    Del { image: PathBuf, number: u32 },
    /// Resize partition NUMBER to SIZE, or `max` to fill the free space after it.
    Resize {
        image: PathBuf,
        number: u32,
        size: String,
    },
    /// Change type, name or bootable flag of partition NUMBER.
    Set {
        image: PathBuf,
        number: u32,
        #[arg(long = "type")]
        ptype: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, overrides_with = "no_bootable")]
        bootable: bool,
        #[arg(long)]
        no_bootable: bool,
    },
    /// Print the table; with --json, the fields of `sfdisk --json`.
    List {
        image: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AddArgs {
    image: PathBuf,
    #[arg(value_name = "TYPE")]
    ptype: String,
    /// Size (e.g. 64M); default: the rest of the first free region.
    #[arg(long)]
    size: Option<String>,
    /// First sector; default: the first 1 MiB-aligned free sector.
    #[arg(long)]
    start: Option<u64>,
    /// Partition number; default: the first free one.
    #[arg(long)]
    number: Option<u32>,
    /// GPT partition name.
    #[arg(long, default_value = "")]
    name: String,
    /// Set the bootable flag (MBR active, GPT legacy BIOS bootable).
    #[arg(long)]
    bootable: bool,
    /// MBR: create a logical partition inside the extended one.
    #[arg(long)]
    logical: bool,
}

/// A failure to report: message for stderr, exit status 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

/// Parses a byte size: a number with an optional K/M/G/T suffix; bare numbers are bytes.
fn parse_bytes(text: &str) -> Result<u64, Failure> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| Failure(format!("size {text:?} is too large")));
    }
    vudev::parse_size(text).map_err(Failure)
}

fn open_rw(image: &Path) -> Result<FileDevice, Failure> {
    FileDevice::open(image, false).map_err(|e| Failure(format!("{}: {e}", image.display())))
}

fn read_table(dev: &FileDevice) -> Result<PartitionTable, Failure> {
    let table = part::probe(dev)
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

fn create(image: &Path, size: &str) -> Outcome {
    let bytes = parse_bytes(size)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| Failure(format!("{}: {e}", image.display())))?;
    file.set_len(bytes)?;
    Ok(())
}

fn grow(image: &Path, size: &str) -> Outcome {
    let bytes = parse_bytes(size)?;
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

fn part_command(cmd: PartCommand) -> Outcome {
    match cmd {
        PartCommand::New { image, label, id } => {
            let dev = open_rw(&image)?;
            let table = match label {
                Label::Mbr => {
                    let id = match id {
                        Some(text) => u32::from_str_radix(text.trim_start_matches("0x"), 16)
                            .map_err(|_| {
                                Failure(format!("MBR id {text:?} is not a 32-bit hex number"))
                            })?,
                        None => uuid::Uuid::new_v4().as_u128() as u32,
                    };
                    PartitionTable::new_mbr(dev.size(), dev.sector_size(), id)?
                }
                Label::Gpt => {
                    let guid = match id {
                        Some(text) => uuid::Uuid::parse_str(&text)
                            .map_err(|_| Failure(format!("GUID {text:?} is invalid")))?,
                        None => uuid::Uuid::new_v4(),
                    };
                    PartitionTable::new_gpt(dev.size(), dev.sector_size(), guid)?
                }
            };
            part::write(&dev, &table)?;
        }
        PartCommand::Add(args) => {
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
            part::write(&dev, &table)?;
            println!("{number}");
        }
        PartCommand::Del { image, number } => {
            let dev = open_rw(&image)?;
            let mut table = read_table(&dev)?;
            table.delete(number)?;
            part::write(&dev, &table)?;
        }
        PartCommand::Resize {
            image,
            number,
            size,
        } => {
            let dev = open_rw(&image)?;
            let mut table = read_table(&dev)?;
            if size == "max" {
                table.grow_to_fill(number)?;
            } else {
                let sectors = sectors_of(&table, &size)?;
                table.resize(number, sectors)?;
            }
            part::write(&dev, &table)?;
        }
        PartCommand::Set {
            image,
            number,
            ptype,
            name,
            bootable,
            no_bootable,
        } => {
            let dev = open_rw(&image)?;
            let mut table = read_table(&dev)?;
            if let Some(t) = ptype {
                let parsed = PartType::parse(&t, table.scheme == Scheme::Gpt).map_err(Failure)?;
                table.set_type(number, parsed)?;
            }
            if let Some(n) = name {
                table.set_name(number, &n)?;
            }
            if bootable || no_bootable {
                table.set_bootable(number, bootable)?;
            }
            part::write(&dev, &table)?;
        }
        PartCommand::List { image, json } => {
            let dev = FileDevice::open(&image, true)
                .map_err(|e| Failure(format!("{}: {e}", image.display())))?;
            let table = read_table(&dev)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sfdisk_json(&table, &image))?
                );
            } else {
                print_table(&table, &image);
            }
        }
    }
    Ok(())
}

/// The table in the shape of `sfdisk --json`.
fn sfdisk_json(table: &PartitionTable, image: &Path) -> serde_json::Value {
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

fn print_table(table: &PartitionTable, image: &Path) {
    let ss = table.sector_size as u64;
    println!(
        "{}: {} table, {} sectors of {} bytes",
        image.display(),
        table.scheme.sfdisk_label(),
        table.disk_sectors,
        ss
    );
    println!(
        "{:>4} {:>12} {:>12} {:>10} {:>4}  {:<28} name",
        "#", "start", "sectors", "size", "boot", "type"
    );
    for p in &table.partitions {
        println!(
            "{:>4} {:>12} {:>12} {:>10} {:>4}  {:<28} {}",
            p.number,
            p.start,
            p.sectors,
            human(p.sectors * ss),
            if p.bootable { "*" } else { "" },
            p.ptype.to_string(),
            p.name
        );
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Create { image, size } => create(&image, &size),
        Command::Grow { image, size } => grow(&image, &size),
        Command::Part(cmd) => part_command(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("vuimg: {message}");
            ExitCode::from(1)
        }
    }
}
