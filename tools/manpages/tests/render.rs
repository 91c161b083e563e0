//! The generated pages render with groff and man without a warning and carry the sections
//! users need; every `-o` option they list is one the parsers accept; the completions are
//! valid scripts.

use std::process::Command;
use vufuse_api::options::{MountOptions, WritePolicy};
use vurs_manpages::{completion_path, write_all, PAGES, SHELLS};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pages_render_without_warnings_and_have_their_sections() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_all(dir.path()).unwrap();
    assert_eq!(written.len(), PAGES.len() * (1 + SHELLS.len()));
    if !have("groff") || !have("man") {
        eprintln!(
            "skipped the rendering: groff or man missing (apt-get install groff-base man-db)"
        );
        return;
    }
    for page in PAGES {
        let path = dir.path().join("man").join(format!("{}.1", page.name));
        // -ww: every warning; -z: no output, only the diagnostics.
        let groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&groff.stderr);
        assert!(
            groff.status.success() && stderr.trim().is_empty(),
            "{}: groff warns:\n{stderr}",
            page.name
        );
        let man = Command::new("man")
            .args(["-l", "-Tutf8"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&man.stderr);
        assert!(
            man.status.success() && stderr.trim().is_empty(),
            "{}: man -l fails or warns:\n{stderr}",
            page.name
        );
        // Plain text, without the terminal's bold and underline.
        let text = Command::new("groff")
            .args(["-man", "-Tutf8", "-P", "-cbou"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8(text.stdout).unwrap();
        let mut wanted = vec![
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXAMPLES",
            "EXIT STATUS",
            "FILES",
            "SEE ALSO",
        ];
        if !page.mount_options.is_empty() {
            wanted.push("MOUNT OPTIONS");
        }
        for heading in wanted {
            assert!(
                text.lines().any(|l| l == heading),
                "{}: no {heading} section:\n{text}",
                page.name
            );
        }
        assert!(
            text.contains(&format!("{} - {}", page.name, page.summary))
                || text.contains(&format!("{} — {}", page.name, page.summary))
                || text.contains(&format!("{} ‐ {}", page.name, page.summary)),
            "{}: NAME line:\n{text}",
            page.name
        );
        for option in page.mount_options.iter().flat_map(|g| g.options) {
            let first = option.syntax.split([',', '=']).next().unwrap();
            assert!(text.contains(first), "{}: {first} not shown", page.name);
        }
        // Exit status 2 for usage errors is stated.
        assert!(text.contains("Usage error"), "{}:\n{text}", page.name);
    }
}

#[test]
fn the_daemon_pages_list_the_options_that_matter() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    for name in ["fusefatfs", "fuseext2"] {
        let page =
            std::fs::read_to_string(dir.path().join("man").join(format!("{name}.1"))).unwrap();
        for option in [
            "rw+",
            "allow_other",
            "default_permissions",
            "uid=",
            "gid=",
            "umask=",
            "part=",
            "format=",
            "nolock",
            "attr_timeout=",
            "entry_timeout=",
            "max_threads=",
            "auto_unmount",
            "noforget",
            "negative_timeout=",
            "offset=",
        ] {
            let escaped = vurs_manpages::escape(option);
            assert!(page.contains(&escaped), "{name}.1 lacks {option}");
        }
    }
}

#[test]
fn the_fuseext2_page_lists_the_fuse2fs_options() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let page = std::fs::read_to_string(dir.path().join("man/fuseext2.1")).unwrap();
    for option in [
        "norecovery",
        "errors=continue|remount",
        "rw, rw+",
        "fakeroot",
    ] {
        let escaped = vurs_manpages::escape(option);
        assert!(page.contains(&escaped), "fuseext2.1 lacks {option}");
    }
}

#[test]
fn every_listed_option_is_accepted_by_its_parser() {
    for page in PAGES {
        for group in page.mount_options {
            for option in group.options {
                if group.vufs {
                    let (_, rest) = vufs::Options::split([option.sample])
                        .unwrap_or_else(|e| panic!("{}: {}: {e}", page.name, option.sample));
                    assert!(
                        rest.is_empty(),
                        "{}: {} not vufs's",
                        page.name,
                        option.sample
                    );
                } else {
                    MountOptions::parse(option.sample, WritePolicy::ReadOnlyUnlessRw)
                        .unwrap_or_else(|e| panic!("{}: {}: {e}", page.name, option.sample));
                }
            }
        }
    }
    assert!(MountOptions::parse("no_such_option", WritePolicy::ReadOnlyUnlessRw).is_err());
}

#[test]
fn completions_are_valid_scripts() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    for page in PAGES {
        for shell in SHELLS {
            let path = completion_path(dir.path(), shell, page.name);
            let script = std::fs::read_to_string(&path).unwrap();
            assert!(script.contains(page.name), "{}", path.display());
        }
        let bash = completion_path(dir.path(), clap_complete::Shell::Bash, page.name);
        if have("bash") {
            let status = Command::new("bash").arg("-n").arg(&bash).status().unwrap();
            assert!(status.success(), "bash -n {}", bash.display());
        }
    }
}
