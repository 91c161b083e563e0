//! Tests under the real VUOS hypervisor (umvu): whether it is here, a scratch directory with a
//! HOME whose `.vu/modules` holds this build's modules (umvu searches it before its own module
//! directory, so they replace the C modules of the same names), and running a script inside.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs every real-umvu test script needs on PATH.
const PROGRAMS: [&str; 3] = ["umvu", "vu_insmod", "vumount"];

/// Where umvu looks for its own (system) modules.
const SYSTEM_MODULE_DIRS: [&str; 3] = [
    "/usr/local/lib/vu/modules",
    "/usr/lib/vu/modules",
    "/usr/lib/x86_64-linux-gnu/vu/modules",
];

/// Why real-umvu tests cannot run here, or None when they can: umvu, vu_insmod and vumount
/// must be on PATH and each of `system_modules` (e.g. `vufuse`, which hosts the vufuse
/// submodules) installed where umvu looks.
pub fn unavailable(system_modules: &[&str]) -> Option<String> {
    for program in PROGRAMS {
        let on_path = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
        });
        if !on_path {
            return Some(format!("umvu not installed ({program} is not on PATH)"));
        }
    }
    for module in system_modules {
        if !has_module(module) {
            return Some(format!("umvu installed without the {module} module"));
        }
    }
    None
}

/// True if umvu's own module directory holds `NAME.so`.
pub fn has_module(name: &str) -> bool {
    SYSTEM_MODULE_DIRS
        .iter()
        .any(|d| Path::new(d).join(format!("{name}.so")).is_file())
}

/// Installs `so` as `$home/.vu/modules/NAME.so`, which umvu searches before its own module
/// directory, so this build replaces the C module of that name.
pub fn install_module(home: &Path, so: &Path, name: &str) {
    let dir = home.join(".vu/modules");
    std::fs::create_dir_all(&dir).expect("module dir");
    std::fs::copy(so, dir.join(format!("{name}.so")))
        .unwrap_or_else(|e| panic!("copy {} into {}: {e}", so.display(), dir.display()));
}

/// Runs `bash -c script` inside umvu with HOME=`home` in /tmp, killed after `timeout_s`
/// (SIGKILL: a SIGTERMed umvu leaves traced children behind). Returns the exit code (137
/// when killed) and stdout + stderr.
pub fn run(home: &Path, script: &str, timeout_s: u32) -> (i32, String) {
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            &timeout_s.to_string(),
            "umvu",
            "bash",
            "-c",
            script,
        ])
        .env("HOME", home)
        .current_dir("/tmp")
        .output()
        .expect("timeout umvu");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What a real-umvu test works in: a scratch directory, and in it a HOME whose
/// `.vu/modules` holds the modules the test brought.
pub struct UmvuEnv {
    scratch: tempfile::TempDir,
    home: PathBuf,
}

impl UmvuEnv {
    /// The scratch directory (removed when this is dropped).
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The HOME to run umvu with.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// [`run`] with this HOME.
    pub fn run(&self, script: &str, timeout_s: u32) -> (i32, String) {
        run(&self.home, script, timeout_s)
    }
}

/// The start of every real-umvu test: when umvu (or one of `system_modules`) is missing,
/// prints why the test is skipped and returns None; otherwise makes the scratch directory
/// and its HOME, installs this build's `libNAME.so` there as `NAME.so` for each of
/// `modules`, and returns it.
pub fn prologue(system_modules: &[&str], modules: &[&str]) -> Option<UmvuEnv> {
    if let Some(reason) = unavailable(system_modules) {
        crate::skip(&reason);
        return None;
    }
    let scratch = tempfile::tempdir().expect("scratch directory");
    let home = scratch.path().join("home");
    std::fs::create_dir_all(&home).expect("HOME");
    for name in modules {
        install_module(&home, &module_path(name), name);
    }
    Some(UmvuEnv { scratch, home })
}

/// Finds a cdylib built for this test run (`libNAME.so`), next to the running test
/// executable (in `deps/` or its parent).
pub fn module_path(lib_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let file = format!("lib{lib_name}.so");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let candidate = dir.join(&file);
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "{file} not built next to {} (is it a dev-dependency of this crate?)",
        exe.display()
    );
}
