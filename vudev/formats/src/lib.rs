//! VM disk image formats as [`vudev::BlockDevice`]s (in progress: issue 14).
#![warn(missing_docs)]
