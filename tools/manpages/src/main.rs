//! `vurs-manpages OUTDIR`: writes `OUTDIR/man/NAME.1` and the bash, zsh and fish completions
//! of every vurs binary (see the library).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let [out_dir] = args.as_slice() else {
        eprintln!("usage: vurs-manpages OUTDIR");
        return ExitCode::from(2);
    };
    match vurs_manpages::write_all(std::path::Path::new(out_dir)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "vurs-manpages: {}: {e}",
                std::path::Path::new(out_dir).display()
            );
            ExitCode::FAILURE
        }
    }
}
