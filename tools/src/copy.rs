//! Copies planned before they start: the whole list of what to create is
//! gathered first (so a missing source or a copy that cannot fit fails
//! before the first write), then written to the host or into a volume.

use crate::fail;
use crate::progress::Progress;
use crate::util::Outcome;
use crate::volume::{FsKind, Meta, Volume, Xattr};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
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
    /// A fifo, socket or device node (`rdev` in the kernel's `new_encode_dev` form, as FUSE
    /// carries it).
    Node {
        /// Fifo, socket, character or block device.
        kind: FileKind,
        /// Device number of a device node (0 otherwise).
        rdev: u32,
    },
}

/// Identifies one file with several names (hard links) in a copy's source: the host's
/// (device, inode) or a source volume's inode. Items sharing a key become hard links of the
/// first one where the destination has links (ext), copies elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey(pub u64, pub u64);

/// The key of a source volume's inode (device `u64::MAX`: no host device has it).
fn volume_link_key(ino: Ino) -> LinkKey {
    LinkKey(u64::MAX, ino.0)
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
    /// Set when the source has other names for the same file (hard links).
    pub link: Option<LinkKey>,
    /// Extended attributes (user., trusted., security., system.posix_acl_*), kept on ext.
    pub xattrs: Vec<Xattr>,
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
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::symlink_metadata(src).map_err(|e| fail!("{}: {e}", src.display()))?;
    let meta = Meta::of_host(&md);
    let ft = md.file_type();
    let xattrs = host_xattrs(src)?;
    let link = (!ft.is_dir() && md.nlink() > 1).then(|| LinkKey(md.dev(), md.ino()));
    let item = |kind, origin| Item {
        dest: dest.to_string(),
        kind,
        origin,
        meta,
        link,
        xattrs: xattrs.clone(),
    };
    if ft.is_dir() {
        if !recursive {
            return Err(fail!("{}: is a directory (use -r)", src.display()));
        }
        if !contents_only {
            out.push(item(ItemKind::Dir, Origin::None));
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
        let target = target.as_os_str().as_bytes().to_vec();
        out.push(item(ItemKind::Symlink(target), Origin::None));
    } else if ft.is_file() {
        // Opened now so that an unreadable source fails before any write.
        File::open(src).map_err(|e| fail!("{}: {e}", src.display()))?;
        out.push(item(
            ItemKind::File(md.len()),
            Origin::Host(src.to_path_buf()),
        ));
    } else {
        let kind = if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else {
            return Err(fail!("{}: a file of unknown type", src.display()));
        };
        let rdev = fuse_rdev(md.rdev());
        out.push(item(ItemKind::Node { kind, rdev }, Origin::None));
    }
    Ok(())
}

/// A host device number in the encoding FUSE and ext use (Linux's `new_encode_dev`).
fn fuse_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The extended attributes of a host file (not following a symbolic link); none where the
/// host filesystem has none.
fn host_xattrs(path: &Path) -> Outcome<Vec<Xattr>> {
    use rustix::io::Errno as E;
    let unsupported = |e: E| e == E::NOTSUP || e == E::NODATA;
    let shown = |e: E| fail!("{}: reading extended attributes: {e}", path.display());
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(shown(e)),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(shown)?;
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr_query(path, name_os) {
            Ok(len) => len,
            // Removed since it was listed.
            Err(E::NODATA) => continue,
            Err(e) => return Err(shown(e)),
        };
        let mut value = vec![0u8; len];
        let got = rustix::fs::lgetxattr(path, name_os, &mut value[..]).map_err(shown)?;
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    Ok(out)
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
    let shown = |e| fail!("{}:{src}: {e}", vol.name);
    let meta = Meta::of_attr(attr);
    let xattrs = vol.xattrs(attr.ino).map_err(shown)?;
    let link = (attr.kind != FileKind::Dir && attr.nlink > 1).then(|| volume_link_key(attr.ino));
    let item = |kind, origin| Item {
        dest: dest.to_string(),
        kind,
        origin,
        meta,
        link,
        xattrs: xattrs.clone(),
    };
    match attr.kind {
        FileKind::Dir => {
            if !recursive {
                return Err(fail!("{}:{src}: is a directory (use -r)", vol.name));
            }
            if !contents_only {
                out.push(item(ItemKind::Dir, Origin::None));
            }
            let entries = vol.list(attr.ino).map_err(shown)?;
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
        FileKind::File => out.push(item(ItemKind::File(attr.size), Origin::Image(attr.ino))),
        FileKind::Symlink => {
            let target = vol.readlink(attr.ino).map_err(shown)?;
            out.push(item(ItemKind::Symlink(target), Origin::None))
        }
        kind => out.push(item(
            ItemKind::Node {
                kind,
                rdev: attr.rdev,
            },
            Origin::None,
        )),
    }
    Ok(())
}

/// Items of a plan that are not directories (what a progress bar counts as files).
pub fn file_count<'a>(items: impl IntoIterator<Item = &'a Item>) -> u64 {
    items
        .into_iter()
        .filter(|i| i.kind != ItemKind::Dir)
        .count() as u64
}

/// Total file bytes of a plan.
pub fn total_bytes(items: &[Item]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .filter(|i| i.link.is_none_or(|key| seen.insert(key)))
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
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| i.link.is_none_or(|key| seen.insert(key)))
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
            ItemKind::Symlink(_) | ItemKind::Node { .. } => 0,
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
    let mut written: HashMap<LinkKey, Ino> = HashMap::new();
    let mut xattrs_noted = false;
    for item in items {
        let meta = policy.apply(item.meta);
        let second_name = item.link.and_then(|key| written.get(&key));
        if item.kind != ItemKind::Dir {
            progress.file_done();
        }
        if let Some(&first) = second_name.filter(|_| dst.kind.has_hard_links()) {
            // FAT and exFAT have no links: there, each name gets its own copy.
            link_second_name(dst, item, first)?;
            continue;
        }
        let Some(ino) = make_in_volume(item, &meta, src, dst, progress)? else {
            continue;
        };
        if item.kind == ItemKind::Dir {
            dirs.push((ino, meta, &item.dest));
        }
        if let Some(key) = item.link {
            written.insert(key, ino);
        }
        if !item.xattrs.is_empty() {
            set_or_note_xattrs(dst, item, ino, &mut xattrs_noted)?;
        }
    }
    // Directory times last, deepest first: adding entries changed them.
    for (ino, meta, shown) in dirs.iter().rev() {
        dst.set_meta(*ino, meta, shown)?;
    }
    clamp_parents_made(dst, &dirs, policy)
}

/// Gives `item` its name in `dst` as a hard link to `first`, the file written under its
/// first name.
fn link_second_name(dst: &Volume, item: &Item, first: Ino) -> Outcome {
    let (parent, name) = split(&item.dest);
    let parent = dst.mkdir_p(&parent, None)?;
    dst.link(first, parent, OsStr::new(&name), &item.dest)
}

/// Creates `item` in `dst` with `meta` (its parents as needed): its inode, or None for a
/// symbolic link or special file that `dst` cannot hold (skipped with a note).
fn make_in_volume(
    item: &Item,
    meta: &Meta,
    src: Option<&Volume>,
    dst: &Volume,
    progress: &mut Progress,
) -> Outcome<Option<Ino>> {
    let (parent, name) = split(&item.dest);
    let name = OsStr::new(&name);
    match &item.kind {
        ItemKind::Dir => Ok(Some(dst.mkdir_p(&item.dest, Some(meta))?)),
        ItemKind::File(_) => {
            let parent = dst.mkdir_p(&parent, None)?;
            let mut data = open_origin(item, src)?;
            Ok(Some(dst.write_file(
                parent,
                name,
                &mut data,
                Some(meta),
                &item.dest,
                &mut |n| progress.advance(n),
            )?))
        }
        ItemKind::Symlink(target) => {
            let parent = dst.mkdir_p(&parent, None)?;
            make_symlink(dst, item, parent, name, target, meta)
        }
        ItemKind::Node { kind, rdev } => {
            let parent = dst.mkdir_p(&parent, None)?;
            make_node(dst, item, parent, name, (*kind, *rdev), meta)
        }
    }
}

/// Creates the symbolic link `item` (to `target`) as `name` in `parent`, with the times
/// and owner of `meta` where `dst` keeps them; None (with a note) if `dst` has none.
fn make_symlink(
    dst: &Volume,
    item: &Item,
    parent: Ino,
    name: &OsStr,
    target: &[u8],
    meta: &Meta,
) -> Outcome<Option<Ino>> {
    if !dst.kind.has_symlinks() {
        crate::progress::note(&format!(
            "skipping symbolic link {}: {} has none",
            item.dest,
            dst.kind.name()
        ));
        return Ok(None);
    }
    let ino = dst.symlink(parent, name, target, &item.dest)?;
    if dst.kind.keeps_modes() {
        // Times and owner; a link's mode bits mean nothing.
        let mut m = *meta;
        m.perm = 0o777;
        dst.set_meta(ino, &m, &item.dest)?;
    }
    Ok(Some(ino))
}

/// Creates the fifo, socket or device node `item` (`kind`, `rdev`) as `name` in `parent`
/// with `meta`; None (with a note) if `dst` has no special files.
fn make_node(
    dst: &Volume,
    item: &Item,
    parent: Ino,
    name: &OsStr,
    (kind, rdev): (FileKind, u32),
    meta: &Meta,
) -> Outcome<Option<Ino>> {
    if !dst.kind.has_special_files() {
        crate::progress::note(&format!(
            "skipping {} {}: {} has none",
            node_name(kind),
            item.dest,
            dst.kind.name()
        ));
        return Ok(None);
    }
    let ino = dst.mknod(parent, name, kind, meta.perm, rdev, &item.dest)?;
    dst.set_meta(ino, meta, &item.dest)?;
    Ok(Some(ino))
}

/// Sets the extended attributes of `item` on `ino` where `dst` keeps them; elsewhere notes
/// once (`noted`) that they are not kept.
fn set_or_note_xattrs(dst: &Volume, item: &Item, ino: Ino, noted: &mut bool) -> Outcome {
    if dst.kind.keeps_modes() {
        dst.set_xattrs(ino, &item.xattrs, &item.dest)?;
    } else if !*noted {
        *noted = true;
        crate::progress::note(&format!(
            "extended attributes not kept ({} has none), first on {}",
            dst.kind.name(),
            item.dest
        ));
    }
    Ok(())
}

/// Gives the parents made on the way (not among the planned `dirs`) the clamped time of
/// reproducible builds, when `policy` clamps; forgets them either way.
fn clamp_parents_made(dst: &Volume, dirs: &[(Ino, Meta, &str)], policy: MetaPolicy) -> Outcome {
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

/// A special file's kind in messages.
fn node_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "character device",
        FileKind::BlockDevice => "block device",
        _ => "file",
    }
}

/// Block granularity of the holes a copy to the host leaves (the page size: the smallest
/// hole a host filesystem keeps).
const HOLE_GRAIN: usize = 4096;

/// Writes the planned items to the host; image origins are read from `src`. Runs of zeros
/// become holes, second names of one file hard links.
pub fn to_host(items: &[Item], src: Option<&Volume>, progress: &mut Progress) -> Outcome {
    let mut dirs: Vec<(&str, Meta)> = Vec::new();
    let mut written: HashMap<LinkKey, &str> = HashMap::new();
    for item in items {
        let dest = Path::new(&item.dest);
        if item.kind != ItemKind::Dir {
            progress.file_done();
        }
        if let Some(&first) = item.link.and_then(|key| written.get(&key)) {
            let _ = std::fs::remove_file(dest);
            std::fs::hard_link(first, dest).map_err(|e| fail!("{}: {e}", item.dest))?;
            continue;
        }
        match &item.kind {
            ItemKind::Dir => {
                std::fs::create_dir_all(dest).map_err(|e| fail!("{}: {e}", item.dest))?;
                dirs.push((&item.dest, item.meta));
            }
            ItemKind::File(_) => {
                let mut data = open_origin(item, src)?;
                let out = File::create(dest).map_err(|e| fail!("{}: {e}", item.dest))?;
                write_sparse(&out, &mut data, progress).map_err(|e| fail!("{}: {e}", item.dest))?;
                set_host_meta(&out, &item.meta).map_err(|e| fail!("{}: {e}", item.dest))?;
            }
            ItemKind::Symlink(target) => {
                let _ = std::fs::remove_file(dest);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), dest)
                    .map_err(|e| fail!("{}: {e}", item.dest))?;
            }
            ItemKind::Node { kind, rdev } => {
                let _ = std::fs::remove_file(dest);
                make_host_node(dest, *kind, item.meta.perm, *rdev)
                    .map_err(|e| fail!("{}: {e}", item.dest))?;
            }
        }
        if let Some(key) = item.link {
            written.insert(key, &item.dest);
        }
        for (name, value) in &item.xattrs {
            let name = OsStr::from_bytes(name);
            if let Err(e) =
                rustix::fs::lsetxattr(dest, name, value, rustix::fs::XattrFlags::empty())
            {
                crate::progress::note(&format!(
                    "{}: extended attribute {} not kept: {e}",
                    item.dest,
                    name.to_string_lossy()
                ));
            }
        }
    }
    for (dest, meta) in dirs.iter().rev() {
        let f = File::open(dest).map_err(|e| fail!("{dest}: {e}"))?;
        set_host_meta(&f, meta).map_err(|e| fail!("{dest}: {e}"))?;
    }
    Ok(())
}

/// Copies `data` into `out`, leaving holes where whole aligned blocks are zero.
fn write_sparse(out: &File, data: &mut dyn Read, progress: &mut Progress) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = crate::volume::read_full(data, &mut buf)?;
        if n == 0 {
            break;
        }
        for run in crate::volume::data_runs(&buf[..n], Some(HOLE_GRAIN)) {
            out.write_all_at(&buf[run.clone()], offset + run.start as u64)?;
        }
        offset += n as u64;
        progress.advance(n as u64);
    }
    out.set_len(offset)
}

/// Creates a fifo, socket or device node on the host.
fn make_host_node(dest: &Path, kind: FileKind, perm: u32, rdev: u32) -> rustix::io::Result<()> {
    use rustix::fs::FileType;
    let file_type = match kind {
        FileKind::Fifo => FileType::Fifo,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dest,
        file_type,
        rustix::fs::Mode::from_raw_mode(perm),
        rustix::fs::makedev(major, minor),
    )
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
