//! The command line of `vunbd`, as data: the binary parses it, the man page and completion
//! generator (`tools/manpages`) renders it.

use clap::Parser;
use std::path::PathBuf;

/// `vunbd [OPTIONS] IMAGE[@PART]...`.
#[derive(Parser, Debug)]
#[command(
    name = "vunbd",
    version,
    about = "Serve raw images, partitions of them and ramdisks over NBD",
    after_help = "--name names the export just before it on the command line. \
                  The first export is also the default (empty) export name."
)]
pub struct Cli {
    /// Raw image to export; IMAGE@N exports partition N of the image's MBR or GPT.
    #[arg(value_name = "IMAGE[@PART]")]
    pub images: Vec<String>,
    /// Export a zero-filled ramdisk of SIZE (K, M, G, T suffixes; a bare number counts sectors).
    #[arg(long = "ramdisk", value_name = "SIZE")]
    pub ramdisks: Vec<String>,
    /// Name of the export given just before this option.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Keep writes in memory (copy-on-write); images are opened read-only and left unchanged.
    #[arg(long)]
    pub snapshot: bool,
    /// Export everything read-only.
    #[arg(short = 'r', long)]
    pub read_only: bool,
    /// Listen on this Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "bind")]
    pub unix: Option<PathBuf>,
    /// Listen on ADDR or ADDR:PORT (default 127.0.0.1:10809; other addresses only when given).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub bind: Option<String>,
    /// Stay in the foreground (always the case; accepted for compatibility).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Write the process id here once listening; removed on exit.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Log connects, disconnects and errors on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// TLS (NBD_OPT_STARTTLS): off; on (offered, plaintext clients served too); require
    /// (plaintext clients get NBD_REP_ERR_TLS_REQD to every option but STARTTLS and ABORT).
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = ["off", "on", "require"])]
    pub tls: String,
    /// Directory of server-cert.pem and server-key.pem (and ca-cert.pem for
    /// --tls-verify-peer), as nbdkit lays it out; needed with --tls=on or require.
    #[arg(long, value_name = "DIR")]
    pub tls_certificates: Option<PathBuf>,
    /// Require clients to present a certificate signed by ca-cert.pem.
    #[arg(long)]
    pub tls_verify_peer: bool,
}

/// The clap command of `vunbd`.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
