//! The export table: named devices, how each is offered, and finding one by name
//! (the empty name is the first export).

use super::Server;
use crate::proto::*;
use std::sync::Arc;
use vudev::{BlockDevice, FileDevice};

/// One named export: a device and how it is offered.
#[derive(Clone)]
pub struct Export {
    /// The device served.
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes (`NBD_FLAG_READ_ONLY`, `EPERM`), whatever the device allows.
    pub read_only: bool,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: String,
    /// The raw image file the device reads, and where the export starts in it: read
    /// replies are sent from it with `sendfile` (no copy through the server).
    pub direct: Option<(Arc<FileDevice>, u64)>,
}

impl Export {
    /// An export of `device`, read-only when the device is, reporting everything as data.
    pub fn new(device: Arc<dyn BlockDevice>) -> Export {
        Export {
            read_only: device.read_only(),
            device,
            description: String::new(),
            direct: None,
        }
    }

    /// Says that the device reads `file` from byte `base` on, unchanged (a raw image or
    /// a partition of one, not an overlay), so reads may be sent from the file directly.
    pub fn direct_file(mut self, file: Arc<FileDevice>, base: u64) -> Export {
        self.direct = Some((file, base));
        self
    }

    /// Makes the export read-only (or not: a read-only device stays read-only).
    pub fn read_only(mut self, read_only: bool) -> Export {
        self.read_only = read_only || self.device.read_only();
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Export {
        self.description = text.into();
        self
    }

    /// Transmission flags for this export.
    pub(super) fn flags(&self, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_CAN_MULTI_CONN;
        f |= FLAG_SEND_CACHE;
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }
}

impl Server {
    /// Adds an export; the first one added is also the default export (empty name).
    pub fn add_export(&mut self, name: &str, export: Export) -> Result<(), String> {
        if name.len() > MAX_STRING {
            return Err(format!("export name {name:?} is longer than 4096 bytes"));
        }
        if name.is_empty() {
            return Err("export names must not be empty (the first export is the default)".into());
        }
        if self.exports.iter().any(|(n, _)| n == name) {
            return Err(format!("two exports are named {name:?}"));
        }
        self.exports.push((name.to_string(), export));
        Ok(())
    }

    /// The exports, in the order added.
    pub fn exports(&self) -> &[(String, Export)] {
        &self.exports
    }

    pub(super) fn find(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return if self.exports.is_empty() {
                None
            } else {
                Some(0)
            };
        }
        self.exports.iter().position(|(n, _)| n == name)
    }
}
