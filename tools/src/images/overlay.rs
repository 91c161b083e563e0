//! `vuimg overlay BASE NEW`: a copy-on-write overlay over BASE (qcow2 or UML COW).

use crate::cli::OverlayFormat;
use crate::fail;
use crate::progress::note;
use crate::util::Outcome;
use std::path::{Component, Path, PathBuf};

/// `vuimg overlay`.
pub fn overlay(base: &Path, new: &Path, format: OverlayFormat) -> Outcome {
    if std::fs::symlink_metadata(new).is_ok() {
        return Err(fail!(
            "{}: exists (an overlay is never written over a file)",
            new.display()
        ));
    }
    // BASE stays readable meanwhile, and nobody may be writing it.
    let file = crate::image_lock::open_locked(base, true)?;
    let base_format = vudev_formats::probe(&file);
    drop(file);
    let abs_base = std::fs::canonicalize(base).map_err(|e| fail!("{}: {e}", base.display()))?;
    let new_dir = new
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let abs_dir =
        std::fs::canonicalize(new_dir).map_err(|e| fail!("{}: {e}", new_dir.display()))?;
    // Claim the name first (create_new), so a file appearing meanwhile is not replaced.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(new)
        .map_err(|e| fail!("{}: {e}", new.display()))?;
    let made = match format {
        OverlayFormat::Qcow2 => {
            let name = backing_name(&abs_base, &abs_dir);
            vudev_formats::create_qcow2(new, 0, Some(&name)).map(|()| {
                format!(
                    "qcow2 over {} ({base_format}, stored as {})",
                    base.display(),
                    name.display()
                )
            })
        }
        OverlayFormat::Uml => {
            if base_format != vudev_formats::Format::Raw {
                let _ = std::fs::remove_file(new);
                return Err(fail!(
                    "{}: is a {base_format} image; a UML COW overlay's backing file is raw \
                     (convert it first: vuimg convert {} base.img)",
                    base.display(),
                    base.display()
                ));
            }
            vudev_formats::create_uml_cow(new, &abs_base)
                .map(|()| format!("UML COW over {}", abs_base.display()))
        }
    };
    match made {
        Ok(what) => {
            note(&format!("{}: {what}", new.display()));
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(new);
            Err(fail!("{e}"))
        }
    }
}

/// The backing name to store for `base` in an overlay in `dir` (both canonical): relative
/// when they share a directory below `/` (the tree can move as a whole), else absolute.
pub fn backing_name(base: &Path, dir: &Path) -> PathBuf {
    let b: Vec<Component> = base.components().collect();
    let d: Vec<Component> = dir.components().collect();
    let common = b.iter().zip(&d).take_while(|(x, y)| x == y).count();
    // components()[0] is the root: sharing only it means different trees.
    if common < 2 {
        return base.to_path_buf();
    }
    let mut rel = PathBuf::new();
    for _ in common..d.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c);
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_are_relative_within_a_tree() {
        let n = |b: &str, d: &str| backing_name(Path::new(b), Path::new(d));
        assert_eq!(n("/vm/base.img", "/vm"), PathBuf::from("base.img"));
        assert_eq!(n("/vm/a/base.img", "/vm/b"), PathBuf::from("../a/base.img"));
        assert_eq!(
            n("/vm/base.img", "/vm/x/y"),
            PathBuf::from("../../base.img")
        );
        assert_eq!(n("/vm/sub/base.img", "/vm"), PathBuf::from("sub/base.img"));
        assert_eq!(
            n("/srv/base.img", "/home/u"),
            PathBuf::from("/srv/base.img")
        );
    }
}
