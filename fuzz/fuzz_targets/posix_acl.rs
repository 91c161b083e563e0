//! Fuzzes the POSIX ACL xattr parser and check (`vufuse_api::acl`; the bytes come from an
//! image or a host file): any bytes parse to a clean error or to an ACL that writes back to
//! the same bytes, whose mode stays within 0o777, whose chmod lands exactly, and whose
//! permission check answers without panicking for any caller.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vufuse_api::acl::Acl;

fuzz_target!(|data: &[u8]| {
    let (head, acl_bytes) = data.split_at(data.len().min(10));
    let Ok(mut acl) = Acl::parse(acl_bytes) else {
        return;
    };
    assert_eq!(acl.to_bytes(), acl_bytes);
    assert!(acl.mode_bits() <= 0o777);
    let word = |i: usize| u32::from(*head.get(i).unwrap_or(&0));
    let (uid, gid, want) = (word(0) | word(1) << 8, word(2), word(3) & 7);
    let _ = acl.grants(word(4), word(5), uid, |g| g == gid, want);
    let perm = (word(6) | word(7) << 8) & 0o777;
    acl.chmod(perm);
    assert_eq!(acl.mode_bits(), perm);
    assert!(Acl::parse(&acl.to_bytes()).is_ok());
});
