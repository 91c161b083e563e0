//! POSIX access ACLs in the kernel's xattr form (`system.posix_acl_access`): parsed and
//! checked as the kernel checks them (posix_acl_valid, posix_acl_permission), and kept in
//! step with the mode as the kernel's ext4 keeps them (posix_acl_update_mode,
//! posix_acl_chmod).
//!
//! Why here: under FUSE_POSIX_ACL the kernel checks permissions with the ACLs it caches but
//! leaves the mode to the daemon. Its check reads the ACL only when the mode's group bits
//! are set, and takes "other" from the ACL: so setting an ACL must set the mode's group
//! bits to the mask, and chmod must rewrite the owner, mask and other entries (fuseext2).
//! A daemon that acts as itself for a caller checks that caller as the kernel would (vufs).

use vudev::{Errno, Result};

/// The xattr that holds a file's access ACL.
pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
/// The xattr that holds a directory's default ACL.
pub const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

/// The form's version (linux/posix_acl_xattr.h).
const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

/// Entry tag: the owner.
pub const USER_OBJ: u16 = 0x01;
/// Entry tag: a named user.
pub const USER: u16 = 0x02;
/// Entry tag: the owning group.
pub const GROUP_OBJ: u16 = 0x04;
/// Entry tag: a named group.
pub const GROUP: u16 = 0x08;
/// Entry tag: the mask of named entries and the owning group.
pub const MASK: u16 = 0x10;
/// Entry tag: everyone else.
pub const OTHER: u16 = 0x20;

/// One entry: tag, permissions (rwx), and the user or group id of named entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL, checked as the kernel checks one it is given (posix_acl_valid): one owner,
/// owning-group and other entry, a mask when there are named entries, permissions rwx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses the kernel's form; `EINVAL` for anything malformed.
    pub fn parse(value: &[u8]) -> Result<Acl> {
        let body = value.get(HEADER..).ok_or(Errno::EINVAL)?;
        if u32::from_le_bytes(value[..HEADER].try_into().map_err(|_| Errno::EINVAL)?) != VERSION
            || body.len() % ENTRY != 0
        {
            return Err(Errno::EINVAL);
        }
        let entries: Vec<Entry> = body
            .chunks_exact(ENTRY)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let known = [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER];
        let valid = entries
            .iter()
            .all(|e| known.contains(&e.tag) && e.perm & !0o7 == 0)
            && count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1);
        if !valid {
            return Err(Errno::EINVAL);
        }
        Ok(Acl { entries })
    }

    /// The kernel's form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let entries: Vec<(u16, u16, u32)> =
            self.entries.iter().map(|e| (e.tag, e.perm, e.id)).collect();
        encode(&entries)
    }

    /// The permission bits (0o777) the ACL gives the mode: owner, mask (else owning group),
    /// other.
    pub fn mode_bits(&self) -> u32 {
        let perm = |tag| self.entry(tag).map_or(0, |e| u32::from(e.perm));
        let group = if self.entry(MASK).is_some() {
            perm(MASK)
        } else {
            perm(GROUP_OBJ)
        };
        perm(USER_OBJ) << 6 | group << 3 | perm(OTHER)
    }

    /// Whether the mode alone says it all (only the three base entries): such an ACL is
    /// not stored, as ext4 stores none.
    pub fn is_mode_only(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// After a chmod to `perm`: the owner, mask (else owning group) and other entries take
    /// the new bits (posix_acl_chmod).
    pub fn chmod(&mut self, perm: u32) {
        let has_mask = self.entry(MASK).is_some();
        for e in &mut self.entries {
            let bits = match e.tag {
                USER_OBJ => perm >> 6,
                MASK => perm >> 3,
                GROUP_OBJ if !has_mask => perm >> 3,
                OTHER => perm,
                _ => continue,
            };
            e.perm = (bits & 0o7) as u16;
        }
    }

    /// Whether the ACL grants `want` (a mask of 4 read, 2 write, 1 search) to a caller
    /// other than root, the file being owned by `owner_uid` (posix_acl_permission): the
    /// owner entry for the owner, a named-user entry masked, any matching group entry
    /// (owning or named) that grants all of `want`, masked; "other" only when no group
    /// entry matched.
    pub fn grants(
        &self,
        owner_uid: u32,
        owner_gid: u32,
        uid: u32,
        in_group: impl Fn(u32) -> bool,
        want: u32,
    ) -> bool {
        let want = (want & 0o7) as u16;
        let masked = |perm: u16| {
            let mask = self.entry(MASK).map_or(0o7, |m| m.perm);
            perm & mask & want == want
        };
        if uid == owner_uid {
            return self.entry(USER_OBJ).is_some_and(|e| e.perm & want == want);
        }
        if let Some(e) = self.entries.iter().find(|e| e.tag == USER && e.id == uid) {
            return masked(e.perm);
        }
        let mut group_matched = false;
        for e in &self.entries {
            let member = match e.tag {
                GROUP_OBJ => in_group(owner_gid),
                GROUP => in_group(e.id),
                _ => false,
            };
            if member {
                group_matched = true;
                if e.perm & want == want {
                    return masked(e.perm);
                }
            }
        }
        !group_matched && self.entry(OTHER).is_some_and(|e| e.perm & want == want)
    }

    fn entry(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }
}

/// The kernel's form of `entries` (tag, permission bits rwx, id; `u32::MAX` for the entries
/// that name nobody), as written, unchecked: [`Acl::parse`] is the check.
pub fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// A file's access ACL from what reading its xattr gave: None when it has none (ENODATA) or
/// its filesystem keeps none (EOPNOTSUPP, ENOSYS); an error when one is there and cannot be
/// read or parsed, which a check must take as a refusal (the mode bits may grant more).
pub fn access_acl_from(read: Result<Vec<u8>>) -> Result<Option<Acl>> {
    match read {
        Ok(value) => Acl::parse(&value).map(Some),
        Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the caller `uid` may `want` (a mask of 4 read, 2 write, 1 execute or search) on
/// a file owned by `owner_uid`:`owner_gid` whose `mode` is its `st_mode` (type and
/// permission bits), as the kernel decides (generic_permission). Root may read and write
/// anything and search any directory, but execute only a file that some execute bit allows
/// (CAP_DAC_OVERRIDE). Anyone else: the access ACL when the file has one and the caller is
/// not the owner, else the owner's, group's or other's bits. `in_group` answers for the
/// caller's primary and supplementary groups. One decision for every component that checks
/// access itself (vufs acting as the daemon, the VUOS modules' access(2)).
pub fn permits(
    owner_uid: u32,
    owner_gid: u32,
    mode: u32,
    acl: Option<&Acl>,
    uid: u32,
    in_group: impl Fn(u32) -> bool,
    want: u32,
) -> bool {
    let want = want & 0o7;
    if uid == 0 {
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        return want & 1 == 0 || is_dir || mode & 0o111 != 0;
    }
    match acl {
        Some(acl) if uid != owner_uid => acl.grants(owner_uid, owner_gid, uid, in_group, want),
        _ => {
            let bits = if uid == owner_uid {
                mode >> 6
            } else if in_group(owner_gid) {
                mode >> 3
            } else {
                mode
            };
            bits & want == want
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: u32 = 65534;

    #[test]
    fn the_mode_takes_owner_mask_and_other() {
        let a = Acl::parse(&encode(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 4, NOBODY),
            (GROUP_OBJ, 0, u32::MAX),
            (MASK, 4, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]))
        .unwrap();
        assert_eq!(a.mode_bits(), 0o640);
        assert!(!a.is_mode_only());
        let base = Acl::parse(&encode(&[
            (USER_OBJ, 7, 0),
            (GROUP_OBJ, 5, 0),
            (OTHER, 1, 0),
        ]))
        .unwrap();
        assert_eq!(base.mode_bits(), 0o751);
        assert!(base.is_mode_only());
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other_but_not_named_entries() {
        let mut a = Acl::parse(&encode(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 7, NOBODY),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]))
        .unwrap();
        a.chmod(0o704);
        assert_eq!(a.mode_bits(), 0o704);
        let again = Acl::parse(&a.to_bytes()).unwrap();
        assert_eq!(again, a);
        assert!(
            a.to_bytes().windows(2).any(|w| w == [7, 0]),
            "nobody keeps rwx"
        );
    }

    #[test]
    fn grants_as_the_kernel_checks() {
        const OWNER: u32 = 1000;
        const GROUP: u32 = 100;
        // owner rw, nobody r, group (100) nothing, named group 200 rw, mask rw, other r.
        let a = Acl::parse(&encode(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 4, NOBODY),
            (GROUP_OBJ, 0, u32::MAX),
            (super::GROUP, 6, 200),
            (MASK, 6, u32::MAX),
            (OTHER, 4, u32::MAX),
        ]))
        .unwrap();
        let no_groups = |_: u32| false;
        assert!(a.grants(OWNER, GROUP, OWNER, no_groups, 6));
        assert!(!a.grants(OWNER, GROUP, OWNER, no_groups, 1));
        assert!(a.grants(OWNER, GROUP, NOBODY, no_groups, 4));
        assert!(!a.grants(OWNER, GROUP, NOBODY, no_groups, 2));
        // The owning group matched but grants nothing: "other" does not apply.
        assert!(!a.grants(OWNER, GROUP, 7, |g| g == GROUP, 4));
        // Another matching group entry may grant.
        assert!(a.grants(OWNER, GROUP, 7, |g| g == GROUP || g == 200, 6));
        // No entry matches: other.
        assert!(a.grants(OWNER, GROUP, 7, no_groups, 4));
        assert!(!a.grants(OWNER, GROUP, 7, no_groups, 2));
        // The mask limits named entries.
        let mut narrow = a.clone();
        narrow.chmod(0o644);
        assert!(!narrow.grants(OWNER, GROUP, 7, |g| g == 200, 2));
        assert!(narrow.grants(OWNER, GROUP, 7, |g| g == 200, 4));
    }

    #[test]
    fn permits_uses_the_acl_for_others_and_the_mode_for_the_owner() {
        let a = Acl::parse(&encode(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 6, 2000),
            (USER, 0, 3000),
            (GROUP_OBJ, 4, u32::MAX),
            (MASK, 6, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]))
        .unwrap();
        let file = libc::S_IFREG | 0o640;
        let check =
            |uid, gid: u32, want, acl| permits(1000, 100, file, acl, uid, |g| g == gid, want);
        assert!(check(2000, 5, 6, Some(&a)));
        assert!(!check(2000, 5, 6, None), "mode bits alone: other");
        assert!(
            !check(3000, 100, 4, Some(&a)),
            "a named entry wins over the group"
        );
        assert!(check(4000, 100, 4, Some(&a)));
        assert!(check(4000, 100, 4, None));
        assert!(!check(4000, 100, 2, Some(&a)));
        assert!(!check(4000, 5, 4, Some(&a)));
        assert!(check(1000, 5, 6, Some(&a)));
        assert!(!check(1000, 5, 1, Some(&a)));
        // Root: read and write past the ACL and the bits; execute only what some x bit allows,
        // search any directory.
        assert!(check(0, 0, 6, Some(&a)));
        assert!(!check(0, 0, 1, Some(&a)));
        let root = |mode| permits(1000, 100, mode, None, 0, |_| false, 1);
        assert!(root(libc::S_IFREG | 0o010));
        assert!(root(libc::S_IFDIR));
        assert!(!root(libc::S_IFREG | 0o666));
    }

    #[test]
    fn a_missing_acl_is_none_and_an_unreadable_one_an_error() {
        assert_eq!(access_acl_from(Err(Errno::ENODATA)), Ok(None));
        assert_eq!(access_acl_from(Err(Errno::EOPNOTSUPP)), Ok(None));
        assert_eq!(access_acl_from(Err(Errno::EIO)), Err(Errno::EIO));
        assert_eq!(access_acl_from(Ok(vec![1, 2, 3])), Err(Errno::EINVAL));
        let base = encode(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 0, 0)]);
        assert!(access_acl_from(Ok(base)).unwrap().is_some());
    }

    #[test]
    fn malformed_acls_are_refused() {
        let refused = |v: &[u8]| assert_eq!(Acl::parse(v), Err(Errno::EINVAL), "{v:?}");
        refused(b"");
        refused(&[2, 0, 0, 0, 1]);
        refused(&encode(&[(USER_OBJ, 6, 0), (OTHER, 0, 0)])); // no owning group
        refused(&encode(&[
            (USER_OBJ, 6, 0),
            (USER, 4, 1),
            (GROUP_OBJ, 0, 0),
            (OTHER, 0, 0),
        ])); // no mask
        refused(&encode(&[
            (USER_OBJ, 0o10, 0),
            (GROUP_OBJ, 0, 0),
            (OTHER, 0, 0),
        ]));
        refused(&encode(&[
            (0x40, 0, 0),
            (USER_OBJ, 6, 0),
            (GROUP_OBJ, 0, 0),
            (OTHER, 0, 0),
        ]));
        let mut v = encode(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]);
        v[0] = 1;
        refused(&v);
    }

    proptest::proptest! {
        /// Any bytes (an image's stored ACL is untrusted): a clean error or an ACL that
        /// writes back to the same bytes, whose mode and chmod stay within 0o777.
        #[test]
        fn any_bytes_parse_cleanly(bytes in proptest::collection::vec(0u8..=255, 0..64),
                                   perm in 0u32..0o1000) {
            if let Ok(mut acl) = Acl::parse(&bytes) {
                proptest::prop_assert_eq!(acl.to_bytes(), bytes);
                proptest::prop_assert!(acl.mode_bits() <= 0o777);
                acl.chmod(perm);
                proptest::prop_assert_eq!(acl.mode_bits(), perm);
            }
        }

        /// Valid ACLs built from parts always parse.
        #[test]
        fn valid_acls_parse(owner in 0u16..8, group in 0u16..8, other in 0u16..8,
                            named in proptest::collection::vec((0u16..8, 0u32..70000), 0..5)) {
            let mut entries = vec![(USER_OBJ, owner, u32::MAX), (GROUP_OBJ, group, u32::MAX)];
            entries.extend(named.iter().map(|&(p, id)| (USER, p, id)));
            if !named.is_empty() {
                entries.push((MASK, 7, u32::MAX));
            }
            entries.push((OTHER, other, u32::MAX));
            proptest::prop_assert!(Acl::parse(&encode(&entries)).is_ok());
        }
    }
}
