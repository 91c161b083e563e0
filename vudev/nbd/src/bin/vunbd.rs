//! vunbd: serve image files, their partitions and ramdisks over NBD, without root.
//!
//! ```text
//! vunbd [OPTIONS] IMAGE[@PART]...
//! vunbd disk.img --name disk disk.img@2 --name root --unix /tmp/nbd.sock
//! ```
//! `--name` names the export given just before it (default: the image's file name,
//! `file@PART` for a partition, `ramdisk`, `ramdisk2`... for ramdisks). The first export
//! is also the default one (empty export name). vunbd stays in the foreground (`-f` is
//! accepted and is the default: forking needs unsafe code); `--pidfile` records its pid once
//! the socket listens. SIGTERM or SIGINT closes every connection, flushes every export and
//! exits 0. Exit status: 2 for usage errors, 1 for runtime failures.

use clap::{CommandFactory, FromArgMatches};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::Arc;
use vudev::lock::{LockError, LockMode};
use vudev::{BlockDevice, Errno, FileDevice, PartitionedDisk, Ramdisk};
use vudev_nbd::cli::Cli;
use vudev_nbd::{Export, Overlay, Server, ServerOptions, TlsMode};

fn usage(msg: impl std::fmt::Display) -> ! {
    eprintln!("vunbd: {msg}");
    eprintln!("Try 'vunbd --help' for more information.");
    exit(2)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("vunbd: {msg}");
    exit(1)
}

enum Source {
    Image { path: PathBuf, part: Option<u32> },
    Ramdisk(u64),
}

struct Planned {
    source: Source,
    name: String,
}

/// Splits `disk.img@2`; a path that exists as written is never split.
fn split_image(arg: &str) -> (PathBuf, Option<u32>) {
    if !Path::new(arg).exists() {
        if let Some((path, part)) = arg.rsplit_once('@') {
            if let Ok(n) = part.parse::<u32>() {
                return (PathBuf::from(path), Some(n));
            }
        }
    }
    (PathBuf::from(arg), None)
}

fn plan(cli: &Cli, matches: &clap::ArgMatches) -> Vec<Planned> {
    // (command-line index, export) in command-line order.
    let mut exports: Vec<(usize, Planned)> = Vec::new();
    let indices = |id: &str| -> Vec<usize> {
        matches
            .indices_of(id)
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let mut ramdisk_count = 0;
    for (arg, index) in cli.images.iter().zip(indices("images")) {
        let (path, part) = split_image(arg);
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.clone());
        let name = match part {
            Some(n) => format!("{file}@{n}"),
            None => file,
        };
        exports.push((
            index,
            Planned {
                source: Source::Image { path, part },
                name,
            },
        ));
    }
    for (arg, index) in cli.ramdisks.iter().zip(indices("ramdisks")) {
        let size = vudev::parse_size(arg).unwrap_or_else(|e| usage(format!("--ramdisk: {e}")));
        ramdisk_count += 1;
        let name = if ramdisk_count == 1 {
            "ramdisk".to_string()
        } else {
            format!("ramdisk{ramdisk_count}")
        };
        exports.push((
            index,
            Planned {
                source: Source::Ramdisk(size),
                name,
            },
        ));
    }
    if exports.is_empty() {
        usage("nothing to export: give an IMAGE or --ramdisk SIZE");
    }
    exports.sort_by_key(|(i, _)| *i);
    let mut named = vec![false; exports.len()];
    for (name, index) in cli.names.iter().zip(indices("names")) {
        let Some(k) = exports.iter().rposition(|(i, _)| *i < index) else {
            usage(format!("--name {name} must follow the export it names"));
        };
        if named[k] {
            usage(format!(
                "export {} is named twice (--name {name})",
                exports[k].1.name
            ));
        }
        if name.is_empty() || name.len() > 4096 {
            usage(format!("--name {name:?}: names are 1 to 4096 bytes"));
        }
        named[k] = true;
        exports[k].1.name = name.clone();
    }
    let mut seen = HashMap::new();
    for (_, p) in &exports {
        if seen.insert(p.name.clone(), ()).is_some() {
            usage(format!(
                "two exports are named {:?}: name them apart with --name",
                p.name
            ));
        }
    }
    exports.into_iter().map(|(_, p)| p).collect()
}

/// An image opened for export: the disk it holds (through its format) and, for raw
/// images, the file itself (its holes answer BLOCK_STATUS).
#[derive(Clone)]
struct Opened {
    disk: Arc<dyn BlockDevice>,
    raw_file: Option<Arc<FileDevice>>,
}

fn open_image(path: &Path, cli: &Cli, opened: &mut HashMap<PathBuf, Opened>) -> Opened {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(f) = opened.get(&key) {
        return f.clone();
    }
    let read_only = cli.read_only || cli.snapshot;
    let file = FileDevice::open(path, read_only)
        .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    let mode = if read_only {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    match file.lock(mode) {
        Ok(()) => {}
        Err(LockError::Busy { held }) => fail(format!(
            "{}: in use (another program holds it {held})",
            path.display()
        )),
        Err(LockError::Failed(e)) => fail(format!("{}: cannot lock: {e}", path.display())),
    }
    // qcow2 (with its backing chain), VDI, VMDK and UML COW images export the disk they hold.
    let image = if vudev_formats::probe(&file) == vudev_formats::Format::Raw {
        let file = Arc::new(file);
        Opened {
            disk: file.clone(),
            raw_file: Some(file),
        }
    } else {
        let options = vudev_formats::OpenOptions {
            read_only,
            ..Default::default()
        };
        let disk =
            vudev_formats::open_file(file, path, &options).unwrap_or_else(|e| fail(e.to_string()));
        Opened {
            disk,
            raw_file: None,
        }
    };
    opened.insert(key, image.clone());
    image
}

/// The TLS the options ask for (certificates read now: a bad file fails at start-up).
fn server_tls(cli: &Cli) -> Option<vudev_nbd::ServerTls> {
    let mode: TlsMode = cli
        .tls
        .parse()
        .unwrap_or_else(|e| usage(format!("--tls: {e}")));
    if mode == TlsMode::Off {
        if cli.tls_certificates.is_some() || cli.tls_verify_peer {
            usage("--tls-certificates and --tls-verify-peer need --tls=on or --tls=require");
        }
        return None;
    }
    let Some(dir) = &cli.tls_certificates else {
        usage(format!("--tls={} needs --tls-certificates DIR", cli.tls));
    };
    match vudev_nbd::ServerTls::from_dir(dir, mode, cli.tls_verify_peer) {
        Ok(t) => Some(t),
        Err(e) => fail(format!("TLS certificates: {e}")),
    }
}

fn build(cli: &Cli, planned: Vec<Planned>, verbose: bool) -> Server {
    let mut server = Server::new(ServerOptions {
        verbose,
        tls: server_tls(cli),
        ..ServerOptions::default()
    });
    let mut opened = HashMap::new();
    for p in planned {
        let export = match &p.source {
            Source::Ramdisk(size) => {
                let disk = Ramdisk::new(*size)
                    .unwrap_or_else(|e| fail(format!("--ramdisk of {size} bytes: {e}")));
                Export::new(Arc::new(disk)).description(format!("ramdisk of {size} bytes"))
            }
            Source::Image { path, part } => {
                let image = open_image(path, cli, &mut opened);
                let (device, start, what): (Arc<dyn BlockDevice>, u64, String) = match part {
                    None => (image.disk.clone(), 0, path.display().to_string()),
                    Some(n) => {
                        let disk = PartitionedDisk::new(image.disk.clone());
                        if let Some(e) = disk.table_error() {
                            fail(format!("{}: partition table: {e}", path.display()));
                        }
                        let window = disk.partition(*n).unwrap_or_else(|_| {
                            fail(format!("{}: no partition {n}", path.display()))
                        });
                        let start = window.start();
                        (
                            Arc::new(window),
                            start,
                            format!("{} partition {n}", path.display()),
                        )
                    }
                };
                if cli.snapshot {
                    Export::new(Arc::new(Overlay::new(device)))
                        .description(format!("{what} (snapshot)"))
                } else {
                    let export = Export::new(device).description(what);
                    // Block status is the device's own map (raw holes, qcow2 tables...).
                    match image.raw_file {
                        Some(file) => export.direct_file(file, start),
                        None => export,
                    }
                }
            }
        };
        let export = export.read_only(cli.read_only);
        if let Err(e) = server.add_export(&p.name, export) {
            usage(e);
        }
    }
    server
}

fn bind_address(text: &str) -> Vec<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return vec![a];
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, 10809)];
    }
    let resolved = if text.contains(':') {
        text.to_socket_addrs()
    } else {
        (text, 10809).to_socket_addrs()
    };
    match resolved {
        Ok(a) => a.collect(),
        Err(_) => usage(format!("--bind {text}: not an address[:port]")),
    }
}

fn unix_listener(path: &Path) -> UnixListener {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            fail(format!("{}: exists and is not a socket", path.display()));
        }
        if UnixStream::connect(path).is_ok() {
            fail(format!("{}: another server is listening", path.display()));
        }
        // A stale socket of a server that is gone.
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path)
        .unwrap_or_else(|e| fail(format!("{}: {}", path.display(), Errno::from(e))))
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let _ = cli.foreground;
    let planned = plan(&cli, &matches);
    let listener = match (&cli.unix, &cli.bind) {
        (Some(path), _) => Listener::Unix(unix_listener(path), path.clone()),
        (None, bind) => {
            let addrs = bind_address(bind.as_deref().unwrap_or("127.0.0.1:10809"));
            let l = TcpListener::bind(&addrs[..]).unwrap_or_else(|e| {
                fail(format!(
                    "cannot listen on {}: {}",
                    bind.as_deref().unwrap_or("127.0.0.1:10809"),
                    Errno::from(e)
                ))
            });
            Listener::Tcp(l)
        }
    };
    let server = Arc::new(build(&cli, planned, cli.verbose));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .unwrap_or_else(|e| fail(format!("cannot handle signals: {}", Errno::from(e))));
    if let Some(pidfile) = &cli.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .unwrap_or_else(|e| fail(format!("{}: {}", pidfile.display(), Errno::from(e))));
    }
    let socket_path = match &listener {
        Listener::Unix(_, p) => Some(p.clone()),
        Listener::Tcp(_) => None,
    };
    if cli.verbose {
        let names: Vec<&str> = server.exports().iter().map(|(n, _)| n.as_str()).collect();
        let at = match &listener {
            Listener::Unix(_, p) => p.display().to_string(),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
        };
        eprintln!("vunbd: serving {} on {at}", names.join(", "));
    }
    let serving = server.clone();
    std::thread::spawn(move || {
        let r = match listener {
            Listener::Unix(l, _) => serving.serve_unix(l),
            Listener::Tcp(l) => serving.serve_tcp(l),
        };
        if let Err(e) = r {
            eprintln!("vunbd: accepting connections: {}", Errno::from(e));
        }
    });
    let signal = signals.forever().next();
    if cli.verbose {
        eprintln!("vunbd: signal {}: shutting down", signal.unwrap_or(0));
    }
    server.shutdown();
    let mut status = 0;
    if let Err((name, e)) = server.flush_all() {
        eprintln!("vunbd: flushing export {name}: {e}");
        status = 1;
    }
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = &cli.pidfile {
        let _ = std::fs::remove_file(p);
    }
    exit(status);
}
