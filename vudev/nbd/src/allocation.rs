//! Which parts of an export hold data, from the server's `base:allocation` metadata
//! context: asked for at the handshake (`NBD_OPT_SET_META_CONTEXT`), queried with
//! `NBD_CMD_BLOCK_STATUS` (the client's `BlockDevice::extents`). A copy out of an export
//! then reads its data alone and skips holes and zeroed ranges, as `nbdcopy` does; the
//! whole-export map and its bounds are `vudev::data_ranges`'s.

/// The metadata context of allocation, the one every NBD server with block status offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// The `NBD_OPT_SET_META_CONTEXT` payload that asks for [`BASE_ALLOCATION`] on `export`.
pub fn set_meta_context_payload(export: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + export.len() + BASE_ALLOCATION.len());
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    v.extend_from_slice(BASE_ALLOCATION.as_bytes());
    v
}

/// The context id an `NBD_REP_META_CONTEXT` reply gives, when it names `base:allocation`.
pub fn base_allocation_id(reply: &[u8]) -> Option<u32> {
    let id = u32::from_be_bytes(reply.get(..4)?.try_into().ok()?);
    (reply.get(4..)? == BASE_ALLOCATION.as_bytes()).then_some(id)
}

/// The extents (length, flags) of one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for context
/// `id`; `None` when the chunk is malformed (short, ragged, a zero length) and an empty
/// list when it is another context's.
pub fn parse_block_status(chunk: &[u8], id: u32) -> Option<Vec<(u32, u32)>> {
    let (head, body) = chunk.split_at_checked(4)?;
    if body.is_empty() || body.len() % 8 != 0 {
        return None;
    }
    if u32::from_be_bytes(head.try_into().ok()?) != id {
        return Some(Vec::new());
    }
    body.chunks_exact(8)
        .map(|d| {
            let len = u32::from_be_bytes(d[..4].try_into().expect("4 bytes"));
            let flags = u32::from_be_bytes(d[4..].try_into().expect("4 bytes"));
            (len != 0).then_some((len, flags))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{STATE_HOLE, STATE_ZERO};

    #[test]
    fn the_context_request_and_reply_follow_the_spec() {
        let p = set_meta_context_payload("disk");
        assert_eq!(&p[..4], &4u32.to_be_bytes());
        assert_eq!(&p[4..8], b"disk");
        assert_eq!(&p[8..12], &1u32.to_be_bytes());
        assert_eq!(&p[12..16], &15u32.to_be_bytes());
        assert_eq!(&p[16..], b"base:allocation");
        let mut reply = 7u32.to_be_bytes().to_vec();
        reply.extend_from_slice(b"base:allocation");
        assert_eq!(base_allocation_id(&reply), Some(7));
        assert_eq!(base_allocation_id(b"\0\0\0\x07qemu:dirty-bitmap:x"), None);
        assert_eq!(base_allocation_id(b"\0\0"), None);
    }

    #[test]
    fn block_status_chunks_are_checked_before_use() {
        let mut chunk = 3u32.to_be_bytes().to_vec();
        for (len, flags) in [(4096u32, 0u32), (8192, STATE_HOLE | STATE_ZERO)] {
            chunk.extend_from_slice(&len.to_be_bytes());
            chunk.extend_from_slice(&flags.to_be_bytes());
        }
        assert_eq!(
            parse_block_status(&chunk, 3),
            Some(vec![(4096, 0), (8192, 3)])
        );
        assert_eq!(parse_block_status(&chunk, 4), Some(vec![]));
        assert_eq!(parse_block_status(&chunk[..chunk.len() - 1], 3), None);
        assert_eq!(parse_block_status(&chunk[..4], 3), None);
        let mut zero = 3u32.to_be_bytes().to_vec();
        zero.extend_from_slice(&[0; 8]);
        assert_eq!(parse_block_status(&zero, 3), None);
    }
}
