//! The command line of `vuimg`, as a library: the binary parses it, the man page and
//! completion generator (`tools/manpages`) renders it.

#![warn(missing_docs)]

pub mod cli;
