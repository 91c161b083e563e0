//! The NBD protocol: server and client (in progress: issue 16).
#![warn(missing_docs)]
