//! Man pages and shell completions for every vurs binary, generated from the clap
//! definitions the binaries parse their command lines with, plus the hand-written
//! sections a user needs beyond them: the `-o` mount options of the FUSE daemons,
//! EXAMPLES, EXIT STATUS, FILES and SEE ALSO.
//!
//! `vurs-manpages OUTDIR` writes `OUTDIR/man/NAME.1`, `OUTDIR/bash/NAME`,
//! `OUTDIR/zsh/_NAME` and `OUTDIR/fish/NAME.fish` for every binary ([`PAGES`]);
//! the top-level Makefile installs them.

#![warn(missing_docs)]

mod text;

use clap::Command;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use text::{MountOption, OptionGroup, PAGES};

/// One binary's page: its clap command and the sections written by hand.
pub struct Page {
    /// The binary's name (`fuseext2`): the page is `NAME.1`.
    pub name: &'static str,
    /// The binary's clap command, as it parses its arguments.
    pub command: fn() -> Command,
    /// A one-line summary for the NAME section (whatis, apropos).
    pub summary: &'static str,
    /// Paragraphs added to the DESCRIPTION (separated by blank lines).
    pub description: &'static str,
    /// The `-o` mount options, in groups (empty for the binaries that take none).
    pub mount_options: &'static [OptionGroup],
    /// Further sections (heading, paragraphs) placed after MOUNT OPTIONS.
    pub sections: &'static [(&'static str, &'static str)],
    /// EXAMPLES: (command, what it does).
    pub examples: &'static [(&'static str, &'static str)],
    /// EXIT STATUS: (status, meaning).
    pub exit_status: &'static [(&'static str, &'static str)],
    /// FILES: (path, what it is).
    pub files: &'static [(&'static str, &'static str)],
    /// SEE ALSO: page references, `name(section)`.
    pub see_also: &'static [&'static str],
}

/// Escapes text for a roff text line: backslashes, hyphens (so options stay `-o` when
/// copied), characters beyond ASCII (as `\[uXXXX]`), and a leading `.` or `'` that would be read as a request.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            // groff reads Latin-1 unless preconv runs first (man runs it, groff does not).
            c if !c.is_ascii() => out.push_str(&format!("\\[u{:04X}]", c as u32)),
            _ => out.push(c),
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// Paragraphs: blank-line separated blocks become `.PP`; a block whose lines all start
/// with two spaces is kept as written (`.nf`, an indented display).
fn paragraphs(out: &mut String, text: &str) {
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let literal = block.lines().all(|l| l.starts_with("  "));
        if literal {
            out.push_str(".PP\n.RS 4\n.nf\n");
            for line in block.lines() {
                out.push_str(&escape(&line[2..]));
                out.push('\n');
            }
            out.push_str(".fi\n.RE\n");
        } else {
            out.push_str(".PP\n");
            for line in block.lines() {
                out.push_str(&escape(line.trim()));
                out.push('\n');
            }
        }
    }
}

fn section(out: &mut String, heading: &str) {
    out.push_str(&format!(".SH \"{}\"\n", heading.to_uppercase()));
}

/// A tagged paragraph: `tag` in bold, `text` below it, indented.
fn tagged(out: &mut String, tag: &str, text: &str) {
    out.push_str(".TP\n");
    out.push_str(&format!("\\fB{}\\fR\n", escape(tag)));
    let mut first = true;
    for block in text.split("\n\n") {
        if !first {
            out.push_str(".IP\n");
        }
        first = false;
        for line in block.lines() {
            out.push_str(&escape(line.trim()));
            out.push('\n');
        }
    }
}

/// The subcommands of `cmd` (recursively, `vuimg part add`), each with its usage and help.
fn commands_section(out: &mut String, cmd: &Command, prefix: &str) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = format!("{prefix} {}", sub.get_name());
        if sub.has_subcommands() {
            commands_section(out, sub, &path);
            continue;
        }
        let mut sub = sub.clone().bin_name(path.clone());
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut text = about;
        let options: Vec<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_positional())
            .filter(|a| a.get_id() != "help" && a.get_id() != "quiet")
            .map(|a| {
                let mut flag = String::new();
                if let Some(s) = a.get_short() {
                    flag.push_str(&format!("-{s}"));
                }
                if let Some(l) = a.get_long() {
                    if !flag.is_empty() {
                        flag.push_str(", ");
                    }
                    flag.push_str(&format!("--{l}"));
                }
                if a.get_action().takes_values() {
                    let names = a
                        .get_value_names()
                        .map(|n| {
                            n.iter()
                                .map(|s| s.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
                    flag.push(' ');
                    flag.push_str(&names);
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let values: Vec<String> = a
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_string())
                    .collect();
                if values.is_empty() {
                    format!("{flag}: {help}")
                } else {
                    format!("{flag}: {help} ({})", values.join(", "))
                }
            })
            .collect();
        if !options.is_empty() {
            text.push_str("\n\n");
            text.push_str(&options.join("\n"));
        }
        out.push_str(".TP\n");
        out.push_str(&format!("\\fB{}\\fR\n", escape(usage)));
        let mut first = true;
        for block in text.split("\n\n") {
            if !first {
                out.push_str(".br\n");
            }
            first = false;
            for line in block.lines() {
                out.push_str(&escape(line.trim()));
                out.push_str("\n.br\n");
            }
        }
    }
}

/// Renders one page as roff.
pub fn render(page: &Page) -> String {
    let cmd = (page.command)();
    let long_about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let cmd = cmd.about(page.summary).long_about(long_about);
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("vurs manual")
        .source(format!("vurs {}", env!("CARGO_PKG_VERSION")));
    let mut roff: Vec<u8> = Vec::new();
    let head = |roff: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(roff)?;
        man.render_name_section(roff)?;
        man.render_synopsis_section(roff)?;
        man.render_description_section(roff)
    };
    head(&mut roff).expect("writing to a Vec cannot fail");
    let mut out = String::from_utf8(roff).expect("roff is UTF-8");
    paragraphs(&mut out, page.description);
    let mut roff: Vec<u8> = Vec::new();
    man.render_options_section(&mut roff)
        .expect("writing to a Vec cannot fail");
    out.push_str(&String::from_utf8(roff).expect("roff is UTF-8"));
    if cmd.has_subcommands() {
        section(&mut out, "commands");
        commands_section(&mut out, &cmd, page.name);
    }
    if !page.mount_options.is_empty() {
        section(&mut out, "mount options");
        out.push_str(
            ".PP\nGiven with \\fB\\-o\\fR, comma separated (a backslash escapes a comma); \
             several \\fB\\-o\\fR are merged in order, a later value overriding an earlier \
             one. An unknown option, or a malformed value, is refused with exit status 2.\n",
        );
        for group in page.mount_options {
            out.push_str(&format!(".SS \"{}\"\n", group.title));
            if !group.intro.is_empty() {
                paragraphs(&mut out, group.intro);
            }
            for option in group.options {
                tagged(&mut out, option.syntax, option.text);
            }
        }
    }
    for (heading, text) in page.sections {
        section(&mut out, heading);
        paragraphs(&mut out, text);
    }
    if !page.examples.is_empty() {
        section(&mut out, "examples");
        for (command, text) in page.examples {
            out.push_str(".PP\n");
            out.push_str(&escape(text));
            out.push_str(":\n.RS 4\n.nf\n");
            out.push_str(&format!("\\fB{}\\fR\n", escape(command)));
            out.push_str(".fi\n.RE\n");
        }
    }
    if !page.exit_status.is_empty() {
        section(&mut out, "exit status");
        for (status, text) in page.exit_status {
            tagged(&mut out, status, text);
        }
    }
    if !page.files.is_empty() {
        section(&mut out, "files");
        for (path, text) in page.files {
            out.push_str(".TP\n");
            out.push_str(&format!("\\fI{}\\fR\n", escape(path)));
            out.push_str(&escape(text));
            out.push('\n');
        }
    }
    if !page.see_also.is_empty() {
        section(&mut out, "see also");
        let refs: Vec<String> = page
            .see_also
            .iter()
            .map(|r| match r.split_once('(') {
                Some((name, sect)) => format!("\\fB{}\\fR({sect}", escape(name)),
                None => format!("\\fB{}\\fR", escape(r)),
            })
            .collect();
        out.push_str(&refs.join(",\n"));
        out.push('\n');
    }
    let mut roff: Vec<u8> = Vec::new();
    man.render_version_section(&mut roff)
        .expect("writing to a Vec cannot fail");
    out.push_str(&String::from_utf8(roff).expect("roff is UTF-8"));
    out
}

/// One shell's completion script for `page`'s binary.
pub fn completion(page: &Page, shell: Shell) -> Vec<u8> {
    let mut cmd = (page.command)();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, page.name, &mut buf);
    buf
}

/// Where each shell's completion for `name` goes under an output directory, as the
/// Makefile expects: `bash/NAME`, `zsh/_NAME`, `fish/NAME.fish`.
pub fn completion_path(out_dir: &Path, shell: Shell, name: &str) -> PathBuf {
    match shell {
        Shell::Bash => out_dir.join("bash").join(name),
        Shell::Zsh => out_dir.join("zsh").join(format!("_{name}")),
        Shell::Fish => out_dir.join("fish").join(format!("{name}.fish")),
        other => out_dir.join(other.to_string()).join(name),
    }
}

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes every page (`man/NAME.1`) and completion under `out_dir`; returns the files written.
pub fn write_all(out_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut write = |path: PathBuf, bytes: &[u8]| -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::File::create(&path)?;
        file.write_all(bytes)?;
        written.push(path);
        Ok(())
    };
    for page in PAGES {
        write(
            out_dir.join("man").join(format!("{}.1", page.name)),
            render(page).as_bytes(),
        )?;
        for shell in SHELLS {
            write(
                completion_path(out_dir, shell, page.name),
                &completion(page, shell),
            )?;
        }
    }
    Ok(written)
}
