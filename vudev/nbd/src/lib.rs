//! The Network Block Device protocol, both ways.
//!
//! - [`Server`] serves any set of [`BlockDevice`](vudev::BlockDevice)s as named exports,
//!   a thread per connection; the `vunbd` binary puts image files, partitions of them,
//!   ramdisks and in-memory snapshots ([`Overlay`]) behind it. It is what lets tools that
//!   speak NBD (qemu, nbdcopy, nbdinfo, the kernel's nbd client) reach this project's
//!   devices without root.
//! - [`NbdDevice`] opens an export of any NBD server (nbdkit, nbd-server, qemu-nbd, ours)
//!   as a `BlockDevice`, so every driver of the project can run over the network.
//!
//! # Protocol subset (doc/proto.md of NetworkBlockDevice/nbd)
//!
//! Handshake: fixed newstyle only (no oldstyle), with `NBD_FLAG_NO_ZEROES`; options
//! `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO` (replying `NBD_INFO_EXPORT`, `NAME`,
//! `DESCRIPTION`, `BLOCK_SIZE`), `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT` for `base:allocation`, and `STARTTLS`; anything else gets
//! `NBD_REP_ERR_UNSUP`. Extended headers are not implemented.
//!
//! TLS (feature `tls`, module [`tls`]): x509 certificates over rustls. A server without
//! [`ServerTls`] refuses `NBD_OPT_STARTTLS` with `NBD_REP_ERR_POLICY`; with
//! [`TlsMode::On`] it acknowledges it and also serves plaintext clients; with
//! [`TlsMode::Require`] (the spec's FORCEDTLS) every other option before TLS but `ABORT`
//! gets `NBD_REP_ERR_TLS_REQD` and `EXPORT_NAME` closes the connection. Options
//! negotiated before STARTTLS are forgotten. A TLS connection is served by one thread,
//! without `sendfile`; plaintext ones as before. The client speaks TLS for `nbds://` and
//! `nbds+unix://` URIs, and never falls back to plaintext. No TLS-PSK (rustls has none).
//!
//! Transmission: `READ` (simple or structured: `OFFSET_DATA`, or `OFFSET_HOLE` for an
//! all-zero range), `WRITE`, `FLUSH`, `TRIM`, `CACHE`, `WRITE_ZEROES` (with `NO_HOLE` and
//! `FAST_ZERO`), `BLOCK_STATUS` (`base:allocation`, `REQ_ONE`), `DISC`, and `FUA` on all
//! of them. Exports advertise `NBD_FLAG_CAN_MULTI_CONN`: connections share the device, so
//! a flush on any connection covers the writes of all. Errors are mapped to the spec's
//! errno values ([`proto::errno_to_nbd`]): read-only → `EPERM`, out of range reads, trims
//! and block status → `EINVAL`, out of range writes → `ENOSPC`.
//!
//! # Limits and defences
//!
//! Every length from the peer is checked before use: option data over 64 KiB gets
//! `NBD_REP_ERR_TOO_BIG` (skipped up to 1 MiB, else the connection is closed); strings
//! over 4096 bytes are invalid; at most 1024 options and 64 meta-context queries per
//! handshake, which must also finish within the handshake timeout (10 s per read and in
//! total). READ and WRITE payloads are capped at 32 MiB (`EINVAL`; an oversized WRITE
//! closes the connection after the error, since its payload cannot be skipped cheaply).
//! At most 64 connections at once; writes to a client time out after 60 s. A garbled
//! request magic closes the connection (the stream cannot be resynchronised).
//!
//! Block status answers what the exported device says of itself
//! ([`vudev::BlockDevice::extents`]): holes of image files (lseek `SEEK_DATA`/`SEEK_HOLE`,
//! also through a partition window), a qcow2's or VMDK's own tables, a ramdisk's chunks;
//! devices that do not know report all data, which is always correct.
//!
//! The client serialises requests over one connection, splits them at 32 MiB, does not
//! request `NBD_INFO_BLOCK_SIZE` (so it sends requests as the caller gives them, which
//! servers with a minimum block size above 1 may refuse), and reconnects and resends a
//! request whose connection failed (see [`client`]).

#![warn(missing_docs)]

pub mod allocation;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod overlay;
pub mod proto;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{ClientOptions, ConnectError, NbdDevice};
pub use overlay::Overlay;
pub use server::{Export, Server, ServerOptions, Transport};
#[cfg(feature = "tls")]
pub use tls::{ClientTls, ServerTls, TlsError, TlsMode};
