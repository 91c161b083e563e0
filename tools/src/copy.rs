//! Copies planned before they start: the whole list of what to create is
//! gathered first (so a missing source or a copy that cannot fit fails
//! before the first write), then written to the host or into a volume.

use crate::fail;
use crate::progress::Progress;
use crate::util::Outcome;
use crate::volume::{FsKind, Meta, Volume};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use vufuse_api::{FileKind, Ino};

/// Where the bytes of an item come from.
pub enum Origin {
    /// A host file.
    Host(PathBuf),
    /// A file in the source volume.
    Image(Ino),
    /// Bytes given inline (build SPEC `text`).
    Inline(Vec<u8>),
    /// Nothing (directories).
    None,
}

/// What an item is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A directory.
    Dir,
    /// A regular file of this many bytes.
    File(u64),
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// One thing to create.
pub struct Item {
    /// Destination path: absolute in a volume, or a host path.
    pub dest: String,
    /// Kind and size.
    pub kind: ItemKind,
    /// Where the data comes from.
    pub origin: Origin,
    /// Times, mode and owner to give it.
    pub meta: Meta,
}

/// Options that change the metadata written.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaPolicy {
    /// Clamp every time to at most this (reproducible builds).
    pub clamp: Option<SystemTime>,
    /// Give every file this owner instead of its own.
    pub owner: Option<(u32, u32)>,
}

impl MetaPolicy {
    fn apply(&self, mut m: Meta) -> Meta {
        if let Some(limit) = self.clamp {
            m.mtime = m.mtime.min(limit);
            m.atime = m.mtime;
        }
        if let Some((uid, gid)) = self.owner {
            m.uid = uid;
            m.gid = gid;
        }
        m
    }
}

/// `dir` + "/" + `name` without doubling slashes.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Splits "/a/b" into ("/a", "b").
pub fn split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => ("/".into(), trimmed[1..].into()),
        Some(i) => (trimmed[..i].into(), trimmed[i + 1..].into()),
        None => (".".into(), trimmed.into()),
    }
}

/// Lists a host file or tree to copy to `dest`. With `contents_only`, a
/// directory's entries go into `dest` rather than the directory itself.
pub fn plan_host(
    src: &Path,
    dest: &str,
    recursive: bool,
    contents_only: bool,
    out: &mut Vec<Item>,
) -> Outcome {
    let md = std::fs::symlink_metadata(src).map_err(|e| fail!("{}: {e}", src.display()))?;
    let meta = Meta::of_host(&md);
    let ft = md.file_type();
    if ft.is_dir() {
        if !recursive {
            return Err(fail!("{}: is a directory (use -r)", src.display()));
        }
        if !contents_only {
            out.push(Item {
                dest: dest.to_string(),
                kind: ItemKind::Dir,
                origin: Origin::None,
                meta,
            });
        }
        let mut names: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| fail!("{}: {e}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| fail!("{}: {e}", src.display()))?;
        names.sort();
        for name in names {
            let child_dest = join(dest, &name.to_string_lossy());
            plan_host(&src.join(&name), &child_dest, true, false, out)?;
        }
    } else if ft.is_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let target = std::fs::read_link(src).map_err(|e| fail!("{}: {e}", src.display()))?;
        out.push(Item {
            dest: dest.to_string(),
            kind: ItemKind::Symlink(target.as_os_str().as_bytes().to_vec()),
            origin: Origin::None,
            meta,
        });
    } else if ft.is_file() {
        // Opened now so that an unreadable source fails before any write.
        File::open(src).map_err(|e| fail!("{}: {e}", src.display()))?;
        out.push(Item {
            dest: dest.to_string(),
            kind: ItemKind::File(md.len()),
            origin: Origin::Host(src.to_path_buf()),
            meta,
        });
    } else {
        return Err(fail!(
            "{}: only files, directories and symbolic links are copied",
            src.display()
        ));
    }
    Ok(())
}

/// Lists a file or tree of a volume to copy to `dest`.
pub fn plan_image(
    vol: &Volume,
    src: &str,
    dest: &str,
    recursive: bool,
    contents_only: bool,
    out: &mut Vec<Item>,
) -> Outcome {
    let attr = vol.resolve_existing(src)?;
    plan_image_attr(vol, &attr, src, dest, recursive, contents_only, out)
}

fn plan_image_attr(
    vol: &Volume,
    attr: &vufuse_api::Attr,
    src: &str,
    dest: &str,
    recursive: bool,
    contents_only: bool,
    out: &mut Vec<Item>,
) -> Outcome {
    let meta = Meta::of_attr(attr);
    match attr.kind {
        FileKind::Dir => {
            if !recursive {
                return Err(fail!("{}:{src}: is a directory (use -r)", vol.name));
            }
            if !contents_only {
                out.push(Item {
                    dest: dest.to_string(),
                    kind: ItemKind::Dir,
                    origin: Origin::None,
                    meta,
                });
            }
            let entries = vol
                .list(attr.ino)
                .map_err(|e| fail!("{}:{src}: {e}", vol.name))?;
            for (name, _, _) in entries {
                let name_s = name.to_string_lossy().into_owned();
                let child_src = join(src, &name_s);
                let child = vol
                    .lookup(attr.ino, &name)
                    .map_err(|e| fail!("{}:{child_src}: {e}", vol.name))?
                    .ok_or_else(|| fail!("{}:{child_src}: vanished", vol.name))?;
                plan_image_attr(
                    vol,
                    &child,
                    &child_src,
                    &join(dest, &name_s),
                    true,
                    false,
                    out,
                )?;
            }
        }
        FileKind::File => out.push(Item {
            dest: dest.to_string(),
            kind: ItemKind::File(attr.size),
            origin: Origin::Image(attr.ino),
            meta,
        }),
        FileKind::Symlink => {
            let target = vol
                .readlink(attr.ino)
                .map_err(|e| fail!("{}:{src}: {e}", vol.name))?;
            out.push(Item {
                dest: dest.to_string(),
                kind: ItemKind::Symlink(target),
                origin: Origin::None,
                meta,
            })
        }
        _ => {
            return Err(fail!(
                "{}:{src}: only files, directories and symbolic links are copied",
                vol.name
            ))
        }
    }
    Ok(())
}

/// Total file bytes of a plan.
pub fn total_bytes(items: &[Item]) -> u64 {
    items
        .iter()
        .map(|i| match i.kind {
            ItemKind::File(n) => n,
            _ => 0,
        })
        .sum()
}

/// Space the items need on a filesystem with `unit`-byte blocks or
/// clusters: whole units per file, one per directory, plus index blocks of
/// large files (an estimate that errs on the generous side).
pub fn space_needed<'a>(items: impl IntoIterator<Item = &'a Item>, unit: u64, kind: FsKind) -> u64 {
    let unit = unit.max(512);
    items
        .into_iter()
        .map(|i| match &i.kind {
            ItemKind::Dir => unit,
            ItemKind::File(n) => {
                let units = n.div_ceil(unit);
                let index = if kind == FsKind::Ext {
                    units.div_ceil(unit / 4)
                } else {
                    0
                };
                (units + index) * unit
            }
            ItemKind::Symlink(t) if kind == FsKind::Ext && t.len() >= 60 => unit,
            ItemKind::Symlink(_) => 0,
        })
        .sum()
}

/// Refuses a copy that cannot fit in `vol`, before anything is written.
pub fn check_fits(vol: &Volume, items: &[Item]) -> Outcome {
    let refs: Vec<&Item> = items.iter().collect();
    check_fits_refs(vol, &refs)
}

/// [`check_fits`] over items gathered from several plans.
pub fn check_fits_refs(vol: &Volume, items: &[&Item]) -> Outcome {
    let st = vol.statfs()?;
    let unit = st.block_size as u64;
    let needed = space_needed(items.iter().copied(), unit, vol.kind);
    let free = st.blocks_free * unit;
    if needed > free {
        return Err(fail!(
            "{}: the copy needs about {} but only {} is free; nothing was copied",
            vol.name,
            crate::util::human(needed),
            crate::util::human(free)
        ));
    }
    if st.files > 0 {
        let inodes = items.len() as u64;
        if inodes > st.files_free {
            return Err(fail!(
                "{}: the copy needs {inodes} inodes but only {} are free; nothing was copied",
                vol.name,
                st.files_free
            ));
        }
    }
    Ok(())
}

fn open_origin<'a>(item: &Item, src: Option<&'a Volume>) -> Outcome<Box<dyn Read + 'a>> {
    Ok(match &item.origin {
        Origin::Host(p) => Box::new(File::open(p).map_err(|e| fail!("{}: {e}", p.display()))?),
        Origin::Image(ino) => {
            let vol = src.expect("image origins come with their volume");
            Box::new(
                vol.reader(*ino)
                    .map_err(|e| fail!("{}: reading: {e}", vol.name))?,
            )
        }
        Origin::Inline(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
        Origin::None => Box::new(std::io::empty()),
    })
}

/// Writes the planned items into `dst`; image origins are read from `src`.
pub fn into_volume(
    items: &[Item],
    src: Option<&Volume>,
    dst: &Volume,
    policy: MetaPolicy,
    progress: &mut Progress,
) -> Outcome {
    let mut dirs: Vec<(Ino, Meta, &str)> = Vec::new();
    for item in items {
        let meta = policy.apply(item.meta);
        let (parent, name) = split(&item.dest);
        match &item.kind {
            ItemKind::Dir => {
                let ino = dst.mkdir_p(&item.dest, Some(&meta))?;
                dirs.push((ino, meta, &item.dest));
            }
            ItemKind::File(_) => {
                let parent = dst.mkdir_p(&parent, None)?;
                let mut data = open_origin(item, src)?;
                dst.write_file(
                    parent,
                    OsStr::new(&name),
                    &mut data,
                    Some(&meta),
                    &item.dest,
                    &mut |n| progress.advance(n),
                )?;
            }
            ItemKind::Symlink(target) => {
                let parent = dst.mkdir_p(&parent, None)?;
                if !dst.kind.has_symlinks() {
                    crate::progress::note(&format!(
                        "skipping symbolic link {}: {} has none",
                        item.dest,
                        dst.kind.name()
                    ));
                    continue;
                }
                if dst
                    .lookup(parent, OsStr::new(&name))
                    .map_err(|e| fail!("{}:{}: {e}", dst.name, item.dest))?
                    .is_some()
                {
                    dst.remove(parent, OsStr::new(&name), false, &item.dest)?;
                }
                let ino = dst.symlink(parent, OsStr::new(&name), target, &item.dest)?;
                if dst.kind.keeps_modes() {
                    // Times and owner; a link's mode bits mean nothing.
                    let mut m = meta;
                    m.perm = 0o777;
                    dst.set_meta(ino, &m, &item.dest)?;
                }
            }
        }
    }
    // Directory times last, deepest first: adding entries changed them.
    for (ino, meta, shown) in dirs.iter().rev() {
        dst.set_meta(*ino, meta, shown)?;
    }
    // Parents made on the way get the clamped time of reproducible builds.
    let made = dst.take_created_dirs();
    if let Some(t) = policy.clamp {
        let planned: std::collections::HashSet<Ino> = dirs.iter().map(|d| d.0).collect();
        let meta = policy.apply(Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: t,
            atime: t,
        });
        for (ino, shown) in made.iter().rev().filter(|d| !planned.contains(&d.0)) {
            dst.set_meta(*ino, &meta, shown)?;
        }
    }
    Ok(())
}

/// Writes the planned items to the host; image origins are read from `src`.
pub fn to_host(items: &[Item], src: Option<&Volume>, progress: &mut Progress) -> Outcome {
    let mut dirs: Vec<(&str, Meta)> = Vec::new();
    for item in items {
        let dest = Path::new(&item.dest);
        match &item.kind {
            ItemKind::Dir => {
                std::fs::create_dir_all(dest).map_err(|e| fail!("{}: {e}", item.dest))?;
                dirs.push((&item.dest, item.meta));
            }
            ItemKind::File(_) => {
                let mut data = open_origin(item, src)?;
                let mut out = File::create(dest).map_err(|e| fail!("{}: {e}", item.dest))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = crate::volume::read_full(&mut data, &mut buf)
                        .map_err(|e| fail!("{}: reading: {e}", item.dest))?;
                    if n == 0 {
                        break;
                    }
                    std::io::Write::write_all(&mut out, &buf[..n])
                        .map_err(|e| fail!("{}: {e}", item.dest))?;
                    progress.advance(n as u64);
                }
                set_host_meta(&out, &item.meta).map_err(|e| fail!("{}: {e}", item.dest))?;
            }
            ItemKind::Symlink(target) => {
                use std::os::unix::ffi::OsStrExt;
                let _ = std::fs::remove_file(dest);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), dest)
                    .map_err(|e| fail!("{}: {e}", item.dest))?;
            }
        }
    }
    for (dest, meta) in dirs.iter().rev() {
        let f = File::open(dest).map_err(|e| fail!("{dest}: {e}"))?;
        set_host_meta(&f, meta).map_err(|e| fail!("{dest}: {e}"))?;
    }
    Ok(())
}

fn set_host_meta(f: &File, meta: &Meta) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(meta.perm))?;
    f.set_times(
        std::fs::FileTimes::new()
            .set_modified(meta.mtime)
            .set_accessed(meta.atime),
    )
}
