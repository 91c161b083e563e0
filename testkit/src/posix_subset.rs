//! A short POSIX conformance subset that CI runs on every daemon with owners and modes: one
//! check for each kind of pjdfstest failure this project has had (access as another user,
//! EPERM vs EACCES, sticky directories, set-id bits, O_TRUNC times, long names). The whole
//! suite is `tests/conformance/pjdfstest.sh`, run by hand; this is its seconds-long sentinel.
//!
//! Each check is a shell script run as root in a fresh directory (mode 0777) of the mount; it acts as
//! uid 65534 through `as_user` and judges each step with `expect`, by the errno the command
//! reports (pjdfstest's style), so a check fails the same way whether the kernel
//! (`default_permissions`) or the daemon refused too little or too much.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// What a check needs of the filesystem beyond owners and modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Owners, groups and permission bits (every check).
    Owners,
    /// Hard links.
    Links,
    /// Device nodes.
    Nodes,
}

/// One check: the pjdfstest file it stands for, what it needs, and its script.
pub struct Check {
    /// The pjdfstest file it stands for, and what it asserts.
    pub name: &'static str,
    /// What the filesystem must keep for the check to apply.
    pub needs: Needs,
    /// The shell steps, after the helpers of the script prelude (`PRELUDE`).
    pub script: &'static str,
}

/// Shell helpers every check script starts with: `as_user CMD...` runs CMD as uid/gid 65534
/// with supplementary group 65533; `expect ERRNO CMD...` runs CMD and fails the check unless
/// it ends with ERRNO (`0` for success); `fail MESSAGE` fails it.
const PRELUDE: &str = r#"
as_user() { setpriv --reuid=65534 --regid=65534 --groups=65533 -- "$@"; }
errno_of() {
  case "$1" in
    *"Operation not permitted"*) echo EPERM ;;
    *"Permission denied"*) echo EACCES ;;
    *"File name too long"*) echo ENAMETOOLONG ;;
    *"No such file or directory"*) echo ENOENT ;;
    *"Read-only file system"*) echo EROFS ;;
    *) echo "unrecognised: $1" ;;
  esac
}
expect() {
  want=$1; shift
  if out=$("$@" 2>&1); then got=0; else got=$(errno_of "$out"); fi
  [ "$got" = "$want" ] || fail "$*: expected $want, got $got"
}
fail() { echo "$1"; exit 1; }
mode_of() { stat -c %a "$1"; }
"#;

/// The checks, named after the pjdfstest files whose failures they stand for.
pub const CHECKS: &[Check] = &[
    Check {
        name: "open/06 reading or appending without permission is EACCES",
        needs: Needs::Owners,
        script: "echo secret > f; chmod 600 f
                 expect EACCES as_user cat f
                 expect EACCES as_user sh -c 'echo x >> f'
                 [ \"$(cat f)\" = secret ] || fail 'the file changed'",
    },
    Check {
        name: "lookup without search permission is EACCES",
        needs: Needs::Owners,
        script: "mkdir -m 700 d; touch d/f
                 expect EACCES as_user stat d/f",
    },
    Check {
        name: "mkdir/05 creating without write permission is EACCES",
        needs: Needs::Owners,
        script: "mkdir -m 755 d
                 expect EACCES as_user mkdir d/x
                 expect EACCES as_user touch d/y
                 [ ! -e d/x ] && [ ! -e d/y ] || fail 'a name was made'",
    },
    Check {
        name: "chmod/05 chmod by a non-owner is EPERM",
        needs: Needs::Owners,
        script: "touch f; chmod 644 f
                 expect EPERM as_user chmod 777 f
                 [ \"$(mode_of f)\" = 644 ] || fail 'the mode changed'",
    },
    Check {
        name: "chown/07 chown by a non-owner is EPERM, never a give-away",
        needs: Needs::Owners,
        script: "touch f; chmod 666 f
                 expect EPERM as_user chown 65534 f
                 as_user touch mine
                 expect EPERM as_user chown 0:0 mine
                 [ \"$(stat -c %u:%g mine)\" = 65534:65534 ] || fail 'mine was given away'",
    },
    Check {
        name: "chown/05 an owner cannot give its file to a group it is not in",
        needs: Needs::Owners,
        script: "as_user touch mine
                 expect EPERM as_user chgrp 0 mine
                 expect 0 as_user chgrp 65533 mine
                 [ \"$(stat -c %g mine)\" = 65533 ] || fail 'group not changed'",
    },
    Check {
        name: "chown/00 an owner's chgrp clears set-id bits",
        needs: Needs::Owners,
        script: "as_user touch mine; as_user chmod 06555 mine
                 expect 0 as_user chgrp 65533 mine
                 [ \"$(mode_of mine)\" = 555 ] || fail \"mode $(mode_of mine), want 555\"",
    },
    Check {
        name: "chmod/12 another user's write clears set-id bits",
        needs: Needs::Owners,
        script: "touch f; chmod 06777 f
                 expect 0 as_user sh -c 'echo x >> f'
                 [ \"$(mode_of f)\" = 777 ] || fail \"mode $(mode_of f), want 777\"",
    },
    Check {
        name: "unlink/11 a sticky directory keeps others' files from removal",
        needs: Needs::Owners,
        script: "mkdir -m 1777 d; touch d/f
                 expect EPERM as_user rm -f d/f
                 as_user touch d/mine
                 expect 0 as_user rm d/mine
                 [ -e d/f ] || fail 'root file removed'",
    },
    Check {
        name: "rename/09 a sticky directory keeps others' files from renaming",
        needs: Needs::Owners,
        script: "mkdir -m 1777 d; touch d/f
                 expect EPERM as_user mv d/f d/g
                 [ -e d/f ] && [ ! -e d/g ] || fail 'renamed'",
    },
    Check {
        name: "utimensat/06 a non-owner may touch to now with write permission, not set times",
        needs: Needs::Owners,
        script: "touch f; chmod 666 f
                 expect 0 as_user touch f
                 expect EPERM as_user touch -d @86400 f",
    },
    Check {
        name: "open/00 O_TRUNC of a non-empty file marks its mtime",
        needs: Needs::Owners,
        script: "printf 12345 > f; touch -d @946684800 f
                 : > f
                 [ \"$(stat -c %Y f)\" != 946684800 ] || fail 'mtime unchanged'",
    },
    Check {
        name: "open/03 a 256-byte name is ENAMETOOLONG, 255 bytes work",
        needs: Needs::Owners,
        script: "n=$(printf 'n%.0s' $(seq 255))
                 expect 0 touch $n
                 expect ENAMETOOLONG touch ${n}x",
    },
    Check {
        name: "user.* xattrs need read permission to read and write permission to set",
        needs: Needs::Owners,
        script:
            "touch f; setfattr -n user.k -v secret f; chmod 600 f
                 expect EACCES as_user getfattr -n user.k f
                 expect EACCES as_user setfattr -n user.k -v x f
                 chmod 644 f
                 expect 0 as_user getfattr -n user.k f
                 expect EACCES as_user setfattr -n user.k -v x f
                 [ \"$(getfattr --only-values -n user.k f)\" = secret ] || fail 'the value changed'",
    },
    Check {
        name: "link/00 a hard link counts",
        needs: Needs::Links,
        script: "touch f; ln f g
                 [ \"$(stat -c %h f)\" = 2 ] || fail \"nlink $(stat -c %h f)\"",
    },
    Check {
        name: "mknod/02 a device node with a 255-byte name",
        needs: Needs::Nodes,
        script: "n=$(printf 'd%.0s' $(seq 255))
                 expect 0 mknod $n c 1 3
                 [ \"$(stat -c %F $n)\" = 'character special file' ] || fail \"$(stat -c %F $n)\"",
    },
];

/// Runs every check in a fresh directory under `mount` (as root), skipping those that need
/// something in `lacks`; returns the failures as "check: what went wrong".
pub fn failures(mount: &Path, lacks: &[Needs]) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, check) in CHECKS.iter().enumerate() {
        if lacks.contains(&check.needs) {
            continue;
        }
        let dir = mount.join(format!("posix-subset-{i}"));
        // Open to all (0777), so the other user can make its own files beside root's.
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)));
        if let Err(e) = made {
            failed.push(format!("{}: mkdir {}: {e}", check.name, dir.display()));
            continue;
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{PRELUDE}\n{}", check.script))
            .current_dir(&dir)
            .output()
            .expect("run sh");
        if !out.status.success() {
            failed.push(format!(
                "{}: {}{}",
                check.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    failed
}
