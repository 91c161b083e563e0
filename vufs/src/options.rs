//! The vufs mount options, parsed once for every front end (the `vufs` FUSE
//! binary now, the `vufs.so` VUOS module later).
//!
//! Words, as the C vufs takes them (VUOS.md section 8): `bind` (= `move`,
//! the default), `merge`, `cow`, `mincow` (mutually exclusive, no value),
//! `except=/PATH` (repeatable, relative to the mount point, leading `/`),
//! `nochcopy`. [`Options::split`] separates these words from the generic
//! ones (`ro`, `allow_other`, ...) that the shared option parser handles.

use std::fmt;
use std::path::PathBuf;

/// How the view combines SOURCE (upper) and the tree under the mount point (lower).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// SOURCE alone (`bind`, `move`).
    #[default]
    Bind,
    /// Union; SOURCE read-only, changes go to the lower tree.
    Merge,
    /// Union; every change lands in SOURCE (copy-up, whiteouts).
    Cow,
    /// Union; act on the lower tree, copy up only where it refuses.
    Mincow,
}

impl Mode {
    /// True for the modes that show the union of both layers.
    pub fn is_union(self) -> bool {
        self != Mode::Bind
    }
}

/// How long the kernel may trust what it has seen of the tree (FUSE front end only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Caching {
    /// `cache=auto` (default): attributes and names for a second, listings read afresh
    /// at every open; changes made to the layers behind the mount show within a second.
    #[default]
    Auto,
    /// `cache=always`: attributes, names and listings kept until this mount changes them
    /// (as libfuse's passthrough_ll and fuse-overlayfs do by default). Only for layers no
    /// one changes behind the mount: a change made there may not show until remount.
    Always,
}

/// The vufs-specific options of one mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The mode.
    pub mode: Mode,
    /// `except=` subtrees (relative, without the leading `/`), shown as the lower tree untouched.
    pub except: Vec<PathBuf>,
    /// `nochcopy`: chmod and chown record a vstat entry instead of copying up.
    pub nochcopy: bool,
    /// `cache=auto|always`: how long the kernel may trust its caches.
    pub caching: Caching,
}

/// A bad vufs option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

/// The keys vufs claims from an option string.
const KEYS: &[&str] = &[
    "bind", "move", "merge", "cow", "mincow", "except", "nochcopy", "cache",
];

impl Options {
    /// Parses a string of vufs options only (comma separated); anything else is an error.
    pub fn parse(text: &str) -> Result<Options, OptionError> {
        let (options, rest) = Options::split([text])?;
        match rest.first() {
            Some(item) => Err(OptionError(format!(
                "bad mount option '{item}': unknown option"
            ))),
            None => Ok(options),
        }
    }

    /// Parses the vufs words out of one or more `-o` strings, returning the
    /// options and the remaining items (unparsed, unescaped) for the generic parser.
    pub fn split<I, S>(texts: I) -> Result<(Options, Vec<String>), OptionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut options = Options::default();
        let mut mode_word: Option<String> = None;
        let mut rest = Vec::new();
        for text in texts {
            for item in split_items(text.as_ref()) {
                if item.is_empty() {
                    continue;
                }
                let (key, value) = match item.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (item.as_str(), None),
                };
                if !KEYS.contains(&key) {
                    rest.push(item.clone());
                    continue;
                }
                let bad =
                    |reason: &str| OptionError(format!("bad mount option '{item}': {reason}"));
                match key {
                    "except" => {
                        let value = value.filter(|v| !v.is_empty()).ok_or_else(|| {
                            bad("needs a path (except=/PATH, relative to the mount point)")
                        })?;
                        let path = value.strip_prefix('/').ok_or_else(|| {
                            bad("the path must start with '/' (relative to the mount point)")
                        })?;
                        let mut clean = PathBuf::new();
                        for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
                            if component == ".." {
                                return Err(bad("'..' is not allowed"));
                            }
                            clean.push(component);
                        }
                        if clean.as_os_str().is_empty() {
                            return Err(bad("excepting the whole mount leaves nothing to serve"));
                        }
                        options.except.push(clean);
                    }
                    "nochcopy" => {
                        if value.is_some() {
                            return Err(bad("takes no value"));
                        }
                        options.nochcopy = true;
                    }
                    "cache" => {
                        options.caching = match value {
                            Some("auto") => Caching::Auto,
                            Some("always") => Caching::Always,
                            _ => return Err(bad("cache=auto or cache=always")),
                        };
                    }
                    _ => {
                        if value.is_some() {
                            return Err(bad("takes no value"));
                        }
                        if let Some(previous) = &mode_word {
                            return Err(OptionError(format!(
                                "bad mount option '{item}': conflicts with '{previous}' \
                                 (bind/move, merge, cow and mincow are mutually exclusive)"
                            )));
                        }
                        mode_word = Some(key.to_string());
                        options.mode = match key {
                            "merge" => Mode::Merge,
                            "cow" => Mode::Cow,
                            "mincow" => Mode::Mincow,
                            _ => Mode::Bind,
                        };
                    }
                }
            }
        }
        Ok((options, rest))
    }
}

pub use vufuse_api::options::{join_items, split_items};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_bind() {
        assert_eq!(Options::parse("").unwrap(), Options::default());
        assert_eq!(Options::parse("bind").unwrap().mode, Mode::Bind);
        assert_eq!(Options::parse("move").unwrap().mode, Mode::Bind);
    }

    #[test]
    fn modes() {
        assert_eq!(Options::parse("merge").unwrap().mode, Mode::Merge);
        assert_eq!(Options::parse("cow").unwrap().mode, Mode::Cow);
        assert_eq!(Options::parse("mincow").unwrap().mode, Mode::Mincow);
        assert!(Mode::Cow.is_union() && !Mode::Bind.is_union());
    }

    #[test]
    fn modes_are_mutually_exclusive() {
        let e = Options::parse("cow,merge").unwrap_err();
        assert!(e.0.contains("mutually exclusive"), "{e}");
        assert!(Options::parse("bind,move").is_err());
        assert!(Options::split(["cow", "cow"]).is_err());
    }

    #[test]
    fn except_and_nochcopy() {
        let o = Options::parse("cow,except=/sub,except=/a/b/,nochcopy").unwrap();
        assert_eq!(o.except, vec![PathBuf::from("sub"), PathBuf::from("a/b")]);
        assert!(o.nochcopy);
        assert!(Options::parse("except=sub").unwrap_err().0.contains("'/'"));
        assert!(Options::parse("except=").is_err());
        assert!(Options::parse("except").is_err());
        assert!(Options::parse("except=/a/../b").is_err());
        assert!(Options::parse("except=/").is_err());
        assert!(Options::parse("nochcopy=1").is_err());
        assert!(Options::parse("cow=1").unwrap_err().0.contains("no value"));
    }

    #[test]
    fn caching() {
        assert_eq!(Options::parse("cow").unwrap().caching, Caching::Auto);
        assert_eq!(
            Options::parse("cow,cache=always").unwrap().caching,
            Caching::Always
        );
        assert_eq!(Options::parse("cache=auto").unwrap().caching, Caching::Auto);
        for bad in ["cache", "cache=", "cache=never", "cache=ALWAYS"] {
            let e = Options::parse(bad).unwrap_err();
            assert!(e.0.contains("cache=always"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_words_are_errors_or_passed_on() {
        let e = Options::parse("cow,frob").unwrap_err();
        assert!(e.0.contains("'frob'"), "{e}");
        let (o, rest) = Options::split(["cow,allow_other", "ro,fsname=a\\,b"]).unwrap();
        assert_eq!(o.mode, Mode::Cow);
        assert_eq!(rest, vec!["allow_other", "ro", "fsname=a,b"]);
        assert_eq!(join_items(&rest), "allow_other,ro,fsname=a\\,b");
    }
}
