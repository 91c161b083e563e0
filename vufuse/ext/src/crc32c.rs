//! The crc32c that libext2fs checksums metadata with (metadata_csum: inodes, directory
//! blocks, bitmaps, descriptors, superblock), the hottest code of a create. libext2fs calls
//! `ext2fs_crc32c_le` through its PLT, so this exported definition takes the place of its
//! table-driven one wherever the driver is linked: in the `fuseext2` executable and in the
//! VUOS modules alike (a dlopened module is searched before its own libext2fs). The `crc32c`
//! crate picks SSE4.2's crc32 instruction at run time, with a table fallback. e2fsck, with
//! its own copy, checks what was written.

/// libext2fs's crc32c update: no inversion before or after (the caller passes and keeps the
/// running value), so it is the crate's appending CRC with the value inverted around it.
///
/// # Safety
/// `p` must point to `len` readable bytes (any pointer when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ext2fs_crc32c_le(crc: u32, p: *const u8, len: usize) -> u32 {
    if len == 0 {
        return crc;
    }
    // SAFETY: the caller (libext2fs: a block, an inode, a descriptor it holds) passes `len`
    // readable bytes at `p`, alive for the call; `len > 0`, so `p` is a real pointer.
    let data = unsafe { std::slice::from_raw_parts(p, len) };
    !crc32c::crc32c_append(!crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bitwise definition (reflected polynomial 0x82F63B78), no inversion.
    fn reference(mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn gives_the_standard_check_value() {
        let data = b"123456789";
        // SAFETY: a live buffer and its length; the empty call reads nothing.
        let (check, empty) = unsafe {
            (
                ext2fs_crc32c_le(!0, data.as_ptr(), data.len()),
                ext2fs_crc32c_le(0x1234_5678, std::ptr::null(), 0),
            )
        };
        assert_eq!(check ^ !0, 0xE306_9283);
        assert_eq!(empty, 0x1234_5678);
    }

    proptest! {
        #[test]
        fn agrees_with_the_bitwise_definition(seed: u32, data in proptest::collection::vec(any::<u8>(), 0..300), skip in 0usize..8) {
            let data = &data[skip.min(data.len())..];
            // SAFETY: a live slice and its length.
            let ours = unsafe { ext2fs_crc32c_le(seed, data.as_ptr(), data.len()) };
            prop_assert_eq!(ours, reference(seed, data));
        }
    }
}
