//! File commands on image addresses: ls, cat, cp, mkdir, rm, mv, and format.

use crate::address::{self, Address, ImagePath};
use crate::copy::{self, Item, MetaPolicy};
use crate::fail;
use crate::format::{self as fmt, FormatRequest, FsType};
use crate::progress::{note, Progress};
use crate::util::{write_out, Outcome};
use crate::volume::Volume;
use std::ffi::OsStr;
use std::time::UNIX_EPOCH;
use vufuse_api::{FileKind, Ino};

/// Opens the volume an address names.
pub fn open_volume(p: &ImagePath, writable: bool) -> Outcome<Volume> {
    let dev = address::open_device(&p.image, p.partition.as_deref(), !writable)?;
    Volume::open(dev, writable, &p.volume_name())
}

fn kind_char(k: FileKind) -> char {
    match k {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::File => '-',
    }
}

fn mode_string(kind: FileKind, perm: u16) -> String {
    let mut s = String::new();
    s.push(kind_char(kind));
    for shift in [6, 3, 0] {
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::File => "file",
        FileKind::CharDevice => "char",
        FileKind::BlockDevice => "block",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
    }
}

fn secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// `vuimg ls`.
pub fn ls(addr: &str, long: bool, json: bool) -> Outcome {
    let p = address::parse_image(addr)?;
    let vol = open_volume(&p, false)?;
    let attr = vol.resolve_existing(&p.path)?;
    let entries: Vec<(String, vufuse_api::Attr)> = if attr.kind == FileKind::Dir {
        let mut v = Vec::new();
        for (name, _, _) in vol.list(attr.ino).map_err(|e| fail!("{}: {e}", p))? {
            let a = vol
                .lookup(attr.ino, &name)
                .map_err(|e| fail!("{p}: {e}"))?
                .ok_or_else(|| fail!("{p}: {} vanished", name.to_string_lossy()))?;
            v.push((name.to_string_lossy().into_owned(), a));
        }
        v
    } else {
        let name = copy::split(&p.path).1;
        vec![(name, attr)]
    };
    let link = |a: &vufuse_api::Attr| -> Option<String> {
        (a.kind == FileKind::Symlink)
            .then(|| vol.readlink(a.ino).ok())
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
    };
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(name, a)| {
                let mut v = serde_json::json!({
                    "name": name,
                    "type": kind_name(a.kind),
                    "size": a.size,
                    "mode": format!("{:04o}", a.perm),
                    "uid": a.uid,
                    "gid": a.gid,
                    "nlink": a.nlink,
                    "mtime": secs(a.mtime),
                });
                if let Some(t) = link(a) {
                    v["target"] = serde_json::json!(t);
                }
                v
            })
            .collect();
        write_out(
            &mut out,
            format_args!("{}\n", serde_json::to_string_pretty(&list)?),
        )?;
    } else if long {
        for (name, a) in &entries {
            let when = secs(a.mtime);
            let target = link(a).map_or(String::new(), |t| format!(" -> {t}"));
            write_out(
                &mut out,
                format_args!(
                    "{} {:>3} {:>5} {:>5} {:>12} {} {name}{target}\n",
                    mode_string(a.kind, a.perm),
                    a.nlink,
                    a.uid,
                    a.gid,
                    a.size,
                    iso_time(when)
                ),
            )?;
        }
    } else {
        for (name, a) in &entries {
            let slash = if a.kind == FileKind::Dir { "/" } else { "" };
            write_out(&mut out, format_args!("{name}{slash}\n"))?;
        }
    }
    vol.close();
    Ok(())
}

/// "2024-01-31 12:00" in UTC.
fn iso_time(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `vuimg cat`.
pub fn cat(addr: &str) -> Outcome {
    let p = address::parse_image(addr)?;
    let vol = open_volume(&p, false)?;
    let attr = vol.resolve_existing(&p.path)?;
    if attr.kind == FileKind::Dir {
        return Err(fail!("{p}: is a directory"));
    }
    let mut reader = vol.reader(attr.ino).map_err(|e| fail!("{p}: {e}"))?;
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut reader, &mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(fail!("{p}: {e}")),
    }
    drop(reader);
    vol.close();
    Ok(())
}

fn basename_host(p: &std::path::Path) -> Outcome<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| fail!("{}: cannot tell the file's name", p.display()))
}

/// `vuimg cp`: everything is planned and checked on read-only mounts; the
/// destination is opened for writing only when the copy can go ahead.
pub fn cp(paths: &[String], recursive: bool) -> Outcome {
    let (dst_text, srcs) = paths.split_last().expect("clap requires two paths");
    let dst = address::parse(dst_text);
    let srcs: Vec<Address> = srcs.iter().map(|s| address::parse(s)).collect();
    let dst_ro = match &dst {
        Address::Image(p) => Some(open_volume(p, false)?),
        Address::Host(_) => None,
    };
    let dst_is_dir = match (&dst, &dst_ro) {
        (Address::Image(p), Some(v)) => {
            v.resolve(&p.path)?.is_some_and(|a| a.kind == FileKind::Dir)
        }
        (Address::Host(h), _) => h.is_dir(),
        _ => false,
    };
    if srcs.len() > 1 && !dst_is_dir {
        return Err(fail!(
            "copying several sources needs an existing directory as the destination"
        ));
    }
    let dst_path = match &dst {
        Address::Image(p) => p.path.clone(),
        Address::Host(h) => h.to_string_lossy().into_owned(),
    };
    // Plan every source: (items, its own read-only volume, or None when it is
    // on the destination's filesystem or on the host).
    let mut plans: Vec<(Vec<Item>, Option<Volume>, bool)> = Vec::new();
    for src in &srcs {
        match src {
            Address::Host(h) => {
                let text = h.to_string_lossy();
                let contents = text == "." || text.ends_with("/.");
                let target = if dst_is_dir && !contents {
                    copy::join(&dst_path, &basename_host(h)?)
                } else {
                    dst_path.clone()
                };
                let mut items = Vec::new();
                copy::plan_host(h, &target, recursive, contents, &mut items)?;
                plans.push((items, None, false));
            }
            Address::Image(sp) => {
                let same = matches!(&dst, Address::Image(dp) if dp.same_volume(sp));
                let vol = if same {
                    None
                } else {
                    Some(open_volume(sp, false)?)
                };
                let reading = vol.as_ref().or(dst_ro.as_ref()).expect("a volume");
                let name = copy::split(&sp.path).1;
                let target = if dst_is_dir && !name.is_empty() {
                    copy::join(&dst_path, &name)
                } else {
                    dst_path.clone()
                };
                let mut items = Vec::new();
                let whole_root = sp.path == "/";
                copy::plan_image(
                    reading, &sp.path, &target, recursive, whole_root, &mut items,
                )?;
                plans.push((items, vol, same));
            }
        }
    }
    if let Some(v) = &dst_ro {
        let all: Vec<&Item> = plans.iter().flat_map(|p| p.0.iter()).collect();
        copy::check_fits_refs(v, &all)?;
    }
    if let Some(v) = dst_ro {
        v.close();
    }
    let dst_rw = match &dst {
        Address::Image(p) => Some(open_volume(p, true)?),
        Address::Host(_) => None,
    };
    let total = plans.iter().map(|p| copy::total_bytes(&p.0)).sum();
    let files = plans.iter().map(|p| copy::file_count(&p.0)).sum();
    let mut progress = Progress::with_files("copying", total, files);
    let mut result = Ok(());
    for (items, vol, same) in &plans {
        let reading = if *same { dst_rw.as_ref() } else { vol.as_ref() };
        result = match &dst_rw {
            Some(v) => copy::into_volume(items, reading, v, MetaPolicy::default(), &mut progress),
            None => copy::to_host(items, reading, &mut progress),
        };
        if result.is_err() {
            break;
        }
    }
    progress.finish();
    for (_, vol, _) in plans {
        if let Some(v) = vol {
            v.close();
        }
    }
    if let Some(v) = dst_rw {
        v.close();
    }
    result
}

fn parent_and_name(vol: &Volume, p: &ImagePath) -> Outcome<(Ino, String)> {
    let (parent, name) = copy::split(&p.path);
    if name.is_empty() {
        return Err(fail!("{p}: the root cannot be changed this way"));
    }
    let attr = vol
        .resolve(&parent)?
        .ok_or_else(|| fail!("{}:{parent}: No such file or directory", vol.name))?;
    if attr.kind != FileKind::Dir {
        return Err(fail!("{}:{parent}: Not a directory", vol.name));
    }
    Ok((attr.ino, name))
}

/// Runs `check` on a read-only mount, then `act` on a writable one: a
/// change that cannot be made fails before the image is opened for writing.
fn edit(
    p: &ImagePath,
    check: impl FnOnce(&Volume) -> Outcome,
    act: impl FnOnce(&Volume) -> Outcome,
) -> Outcome {
    let ro = open_volume(p, false)?;
    let checked = check(&ro);
    ro.close();
    checked?;
    let vol = open_volume(p, true)?;
    let result = act(&vol);
    vol.close();
    result
}

/// `vuimg mkdir`.
pub fn mkdir(addr: &str, parents: bool) -> Outcome {
    let p = address::parse_image(addr)?;
    let check = |vol: &Volume| -> Outcome {
        match vol.resolve(&p.path) {
            Ok(Some(a)) if parents && a.kind == FileKind::Dir => Ok(()),
            Ok(Some(_)) => Err(fail!("{p}: File exists")),
            Ok(None) if parents => Ok(()),
            Ok(None) => parent_and_name(vol, &p).map(|_| ()),
            Err(e) => Err(e),
        }
    };
    edit(&p, check, |vol| {
        if parents {
            vol.mkdir_p(&p.path, None).map(|_| ())
        } else {
            let (parent, name) = parent_and_name(vol, &p)?;
            vol.mkdir(parent, OsStr::new(&name), None, &p.path)
                .map(|_| ())
        }
    })
}

/// `vuimg rm`.
pub fn rm(addr: &str, recursive: bool) -> Outcome {
    let p = address::parse_image(addr)?;
    let check = |vol: &Volume| -> Outcome {
        parent_and_name(vol, &p)?;
        let a = vol.resolve_existing(&p.path)?;
        if a.kind == FileKind::Dir && !recursive {
            return Err(fail!("{p}: is a directory (use -r)"));
        }
        Ok(())
    };
    edit(&p, check, |vol| {
        let (parent, name) = parent_and_name(vol, &p)?;
        vol.remove(parent, OsStr::new(&name), recursive, &p.path)
    })
}

/// `vuimg mv`.
pub fn mv(from: &str, to: &str) -> Outcome {
    let a = address::parse_image(from)?;
    let b = address::parse_image(to)?;
    if !a.same_volume(&b) {
        return Err(fail!(
            "{a} and {b} are on different filesystems: use cp, then rm"
        ));
    }
    let target = |vol: &Volume| -> Outcome<(Ino, String, Ino, String)> {
        let (pa, na) = parent_and_name(vol, &a)?;
        vol.resolve_existing(&a.path)?;
        let (pb, nb) = match vol.resolve(&b.path)? {
            Some(t) if t.kind == FileKind::Dir => (t.ino, copy::split(&a.path).1),
            _ => parent_and_name(vol, &b)?,
        };
        Ok((pa, na, pb, nb))
    };
    edit(
        &a,
        |vol| target(vol).map(|_| ()),
        |vol| {
            let (pa, na, pb, nb) = target(vol)?;
            vol.rename(pa, OsStr::new(&na), pb, OsStr::new(&nb), &a.path)
        },
    )
}

/// `vuimg format`.
pub fn format(args: &crate::cli::FormatArgs) -> Outcome {
    let fs = FsType::parse(&args.fs)?;
    let (image, partition) = match args.target.rsplit_once('@') {
        Some((i, n)) if !std::path::Path::new(&args.target).is_file() => {
            (std::path::PathBuf::from(i), Some(n.to_string()))
        }
        _ => (std::path::PathBuf::from(&args.target), None),
    };
    let unit = match (fs.has_clusters(), &args.cluster_size, &args.block_size) {
        (true, Some(c), _) => Some(fmt::parse_unit(c)?),
        (false, _, Some(b)) => Some(fmt::parse_unit(b)?),
        (true, _, Some(_)) => {
            return Err(fail!("--block-size is for ext; FAT takes --cluster-size"))
        }
        (false, Some(_), _) => {
            return Err(fail!("--cluster-size is for FAT; ext takes --block-size"))
        }
        _ => None,
    };
    let epoch = crate::util::source_date_epoch()?;
    let mut ids = epoch.map(crate::util::IdSource::new);
    let req = FormatRequest {
        label: args.label.clone(),
        unit,
        epoch,
        serial: ids.as_mut().map(|i| i.next_u64() as u32),
        uuid: ids.as_mut().map(|i| i.uuid()),
        features: Vec::new(),
    };
    let dev = address::open_device(&image, partition.as_deref(), false)?;
    let start: u64 = dev_start(&image, partition.as_deref())?.unwrap_or_default();
    let name = args.target.clone();
    if fs.is_exfat() {
        fmt::check_exfat(dev.size(), &req).map_err(|e| fail!("{name}: {}", e.0))?;
        let (cluster, count) =
            fmt::format_exfat(dev.as_ref(), &req).map_err(|e| fail!("{name}: {}", e.0))?;
        note(&format!(
            "{name}: exFAT with {count} clusters of {cluster} bytes"
        ));
    } else if fs.is_fat() {
        fmt::check_fat(dev.size(), fs, &req).map_err(|e| fail!("{name}: {}", e.0))?;
        let layout =
            fmt::format_fat(dev.as_ref(), fs, start, &req).map_err(|e| fail!("{name}: {}", e.0))?;
        note(&format!(
            "{name}: {} with {} clusters of {} bytes",
            layout.fat_type, layout.clusters, layout.cluster_size
        ));
    } else {
        let bytes = dev.size();
        drop(dev);
        // mke2fs writes the image file itself at an offset: only a raw image is its disk.
        let file = vudev::FileDevice::open(&image, true).map_err(|e| fail!("{name}: {e}"))?;
        let format = vudev_formats::probe(&file);
        if format != vudev_formats::Format::Raw {
            return Err(fail!(
                "{name}: ext is formatted by mke2fs on raw images only, and this is {format}: \
                 convert it to raw first (qemu-img convert -O raw)"
            ));
        }
        fmt::check_ext(bytes, &req).map_err(|e| fail!("{name}: {}", e.0))?;
        note(&format!("{name}: running mke2fs"));
        fmt::format_ext(&image, start * 512, bytes, fs, &req)
            .map_err(|e| fail!("{name}: {}", e.0))?;
    }
    Ok(())
}

/// The first sector of the partition, or `None` for a whole image.
fn dev_start(image: &std::path::Path, partition: Option<&str>) -> Outcome<Option<u64>> {
    let Some(which) = partition else {
        return Ok(None);
    };
    let dev = crate::part_cmd::Disk::open(image, true)?;
    let table = crate::part_cmd::read_table(&dev)?;
    let p = address::find_partition(&table, which)
        .ok_or_else(|| fail!("{}@{which}: no such partition", image.display()))?;
    Ok(Some(p.start * table.sector_size as u64 / 512))
}
