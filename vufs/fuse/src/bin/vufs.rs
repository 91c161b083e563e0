//! `vufs [-o OPTS] SOURCE MOUNTPOINT`: VUOS's vufs as a FUSE daemon.
//! SOURCE is the upper layer; MOUNTPOINT is where the view appears and,
//! for merge, cow and mincow, also the lower tree (opened before mounting).

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use vufs::{open_layer, Config, Options, VuFs};
use vufuse::daemon::{self, DaemonSpec, Parsed, Served};

const SPEC: DaemonSpec = vufs_fuse::SPEC;

fn usage(message: &str) -> ExitCode {
    eprintln!("vufs: {message}");
    ExitCode::from(2)
}

/// Takes the vufs words out of every `-o` argument; the rest goes on to the
/// shared parser.
fn split_args(args: Vec<OsString>) -> Result<(Options, Vec<OsString>), String> {
    let mut texts = Vec::new();
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(name) = iter.next() {
        out.push(name);
    }
    let mut positional_only = false;
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if positional_only || text == "--" {
            positional_only = true;
            out.push(arg);
            continue;
        }
        let value = if text == "-o" {
            match iter.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => return Err("option '-o' needs a value (try --help)".into()),
            }
        } else if let Some(v) = text.strip_prefix("-o") {
            v.strip_prefix('=').unwrap_or(v).to_string()
        } else {
            out.push(arg);
            continue;
        };
        texts.push(value);
    }
    let (options, rest) = Options::split(&texts).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        out.push("-o".into());
        out.push(vufs::options::join_items(&rest).into());
    }
    Ok((options, out))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (options, args) = match split_args(args) {
        Ok(x) => x,
        Err(e) => return usage(&e),
    };
    // Validate everything a user can get wrong before forking: exit 2.
    match daemon::parse_command_line(&SPEC, args.clone()) {
        Ok(Parsed::Exit(code)) => return ExitCode::from(code),
        Err(e) => return usage(&e.to_string()),
        Ok(Parsed::Run(invocation)) => {
            let source = invocation.source.as_deref().expect("SOURCE is required");
            match std::fs::metadata(source) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return usage(&format!("SOURCE {} is not a directory", source.display())),
                Err(e) => {
                    return usage(&format!(
                        "SOURCE {}: {}",
                        source.display(),
                        vufs::vudev::Errno::from(e)
                    ))
                }
            }
            if let Err(e) = daemon::check_mountpoint(&invocation.mountpoint, SPEC.mountpoint) {
                return usage(&e.to_string());
            }
        }
    }
    daemon::main_with_args(&SPEC, args, move |invocation| {
        let source = invocation.source.as_deref().ok_or("no SOURCE given")?;
        let upper = open_layer(source).map_err(|e| format!("SOURCE {}: {e}", source.display()))?;
        // The lower tree: opened now, before the mount hides it.
        let lower = open_layer(&invocation.mountpoint)
            .map_err(|e| format!("{}: {e}", invocation.mountpoint.display()))?;
        let config = Config {
            options,
            read_only: invocation.options.read_only,
        };
        let fs =
            VuFs::new(upper, lower, config).map_err(|e| format!("{}: {e}", source.display()))?;
        Ok(Served::new(Arc::new(fs)))
    })
}
