//! `vuimg`: build and edit disk images in scripts, without root or mounts.
//!
//! Images, partition tables, filesystems (FAT in process, ext via mke2fs),
//! file copies through vufuse's drivers, and whole images from a TOML SPEC.
//! Exit codes: 0 ok, 1 failure, 2 usage.

mod address;
mod build;
mod copy;
mod files;
mod format;
mod fs_extent;
mod image_lock;
mod images;
mod part_cmd;
mod progress;
mod repro;
mod util;
mod volume;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;
use util::Failure;
use vuimg::cli;

fn run(cli: Cli) -> util::Outcome {
    progress::set_quiet(cli.quiet);
    match cli.command {
        Command::Create {
            image,
            size,
            format,
        } => images::create::create(&image, &size, format),
        Command::Grow { image, size } => part_cmd::grow(&image, &size),
        Command::Part(cmd) => part_cmd::part_command(cmd),
        Command::Format(args) => files::format(&args),
        Command::Ls {
            address,
            long,
            json,
        } => files::ls(&address, long, json),
        Command::Cat { address } => files::cat(&address),
        Command::Cp { recursive, paths } => files::cp(&paths, recursive),
        Command::Mkdir { parents, address } => files::mkdir(&address, parents),
        Command::Rm { recursive, address } => files::rm(&address, recursive),
        Command::Mv { from, to } => files::mv(&from, &to),
        Command::Convert {
            src,
            dst,
            format,
            force,
        } => images::convert::convert(&src, &dst, format, force),
        Command::Overlay { base, new, format } => images::overlay::overlay(&base, &new, format),
        Command::Commit {
            overlay,
            dst,
            format,
            force,
        } => images::commit::commit(&overlay, dst.as_deref(), format, force),
        Command::Info { image, json } => images::info::info(&image, json),
        Command::Build {
            spec,
            output,
            dry_run,
            json,
        } => build::build(&spec, output.as_deref(), dry_run, json),
    }
}

fn main() -> ExitCode {
    // clap exits 2 on usage errors and 0 for --help / --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("vuimg: {}", util::without_os_error_codes(&message));
            ExitCode::from(1)
        }
    }
}
