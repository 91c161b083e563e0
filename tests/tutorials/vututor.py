"""Shared helper for the VUOS tutorial twins (vudev.py, vufuse.py, vufs.py).

Each script replays one page of VirtualSquare's tutorials
(virtualsquare.github.io, tutorials/vudev.md, vufuse.md, vufs.md) inside a real
`umvu bash`: it types the page's commands and compares what comes back with
what the page shows.  The same script runs twice:

  --modules c     the C modules installed with VUOS (vudevpartx.so, ...)
  --modules ours  this workspace's modules (target/release/libNAME.so),
                  installed as $HOME/.vu/modules/NAME.so in a scratch HOME;
                  umvu searches there before its own module directory
                  (shared/VUOS.md section 7), so the typed commands are the
                  same in both runs.

Only the submodules and vufs.so are replaced; umvu, vudev.so and vufuse.so are
always VUOS's own.  After loading, a "modules" step reads /proc/<umvu>/maps to
show which file of each module umvu really mapped.

Exit status: 0 all steps passed, 1 some step failed, 77 skipped (umvu or
python3-pexpect missing, or the modules of the chosen set not built).
"""

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77

try:
    import pexpect
except ImportError:  # pragma: no cover - checked at run time
    pexpect = None

# "$$" in PS1 would expand to the pid; a lone "$" stays.
PROMPT = "vu$ "

# Module file names this workspace builds (cargo lib name -> VUOS module name).
OUR_MODULES = {
    "vudevpartx": "libvudevpartx.so",
    "vudevramdisk": "libvudevramdisk.so",
    "vudevvdi": "libvudevvdi.so",
    "vufusefatfs": "libvufusefatfs.so",
    "vufuseext2": "libvufuseext2.so",
    "vufs": "libvufs.so",
}

C_MODULE_DIRS = [
    "/usr/local/lib/vu/modules",
    "/usr/lib/vu/modules",
    "/usr/lib/x86_64-linux-gnu/vu/modules",
]


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


# --- expectations -----------------------------------------------------------

class L:
    """An output line expected literally (after trailing blanks are stripped)."""

    def __init__(self, text, wiki=None):
        self.text, self.wiki = text, wiki

    def matches(self, line):
        return line.rstrip() == self.text.rstrip()

    def __str__(self):
        return self.text


class R:
    """An output line matching a regular expression (whole line).

    `wiki` is what the tutorial page shows at that place, when the page's text
    holds things that change from run to run or version to version (dates,
    UUIDs, the e2fsprogs version, user names); a passing line that differs from
    it is reported as a note, not as a failure."""

    def __init__(self, pattern, wiki=None):
        self.pattern, self.wiki = pattern, wiki
        self.rx = re.compile(pattern)

    def matches(self, line):
        return self.rx.fullmatch(line.rstrip()) is not None

    def __str__(self):
        return f"/{self.pattern}/"


class Opt:
    """A line the tutorial shows that may be missing without failing the step
    (a warning a module may rightly not cause); its absence is a note."""

    def __init__(self, inner):
        self.inner = inner
        self.wiki = inner.wiki

    def matches(self, line):
        return self.inner.matches(line)

    def __str__(self):
        return f"(optional) {self.inner}"


class Absent:
    """No output line may match this regular expression."""

    def __init__(self, pattern):
        self.rx = re.compile(pattern)
        self.pattern = pattern

    def __str__(self):
        return f"(no line matching /{self.pattern}/)"


def unbackspace(line):
    """What a terminal shows for a line with progress counters (mke2fs's
    "0/2\\b\\b\\b   \\b\\b\\bdone")."""
    buf, pos = [], 0
    for ch in line:
        if ch == "\b":
            pos = max(0, pos - 1)
        else:
            if pos < len(buf):
                buf[pos] = ch
            else:
                buf.append(ch)
            pos += 1
    return "".join(buf).expandtabs(8).rstrip()


def compare(expect, lines, exact):
    """Returns (ok, differences, notes).

    Not exact: the expected lines must appear in this order among the seen
    lines (other lines may come between).  Exact: the seen output must be
    exactly the expected lines."""
    diffs, notes = [], []
    absents = [e for e in expect if isinstance(e, Absent)]
    expect = [e for e in expect if not isinstance(e, Absent)]
    for a in absents:
        for line in lines:
            if a.rx.search(line):
                diffs.append(f"unexpected: {line!r} (matches /{a.pattern}/)")
    if exact:
        if len(lines) != len(expect) or not all(e.matches(l) for e, l in zip(expect, lines)):
            want = [str(e) for e in expect]
            diffs.extend(
                d for d in difflib.unified_diff(want, lines, "expected", "seen", lineterm="", n=1)
            )
        else:
            for e, l in zip(expect, lines):
                if e.wiki is not None and e.wiki.rstrip() != l.rstrip():
                    notes.append(f"wiki shows {e.wiki!r}, seen {l!r}")
        return not diffs, diffs, notes
    i = 0
    for e in expect:
        j = i
        while j < len(lines) and not e.matches(lines[j]):
            j += 1
        if j == len(lines):
            if isinstance(e, Opt):
                notes.append(f"wiki shows {e.inner}, not seen")
            else:
                diffs.append(f"missing: {e}")
            continue
        if e.wiki is not None and e.wiki.rstrip() != lines[j].rstrip():
            notes.append(f"wiki shows {e.wiki!r}, seen {lines[j]!r}")
        i = j + 1
    if diffs:
        diffs.append("seen:")
        diffs.extend(f"    {l}" for l in lines)
    return not diffs, diffs, notes


# --- the run ----------------------------------------------------------------

class Tutorial:
    """One tutorial page: a scratch directory, a HOME with the chosen module
    set, umvu sessions, and the PASS/FAIL record."""

    def __init__(self, name, description):
        ap = argparse.ArgumentParser(description=description)
        ap.add_argument("--modules", choices=["c", "ours"], default="c",
                        help="c: VUOS's installed modules; ours: this workspace's .so files")
        ap.add_argument("--target-dir", default=None,
                        help="cargo target dir holding release/libNAME.so "
                             "(default: $CARGO_TARGET_DIR, else <repo>/target)")
        ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
        ap.add_argument("--results", default=None,
                        help="also write one line per step to this file: section<TAB>step<TAB>status")
        ap.add_argument("-v", "--verbose", action="store_true",
                        help="print every command's output")
        self.args = ap.parse_args()
        self.name = name
        self.results = []  # (section, step, status)
        self.section = ""
        self.check_prerequisites()
        self.dir = tempfile.mkdtemp(prefix=f"vurs-tut-{name}-{self.args.modules}-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.home, ".vu", "modules"))
        for d in (self.home, os.path.join(self.home, ".vu"), os.path.join(self.home, ".vu", "modules")):
            os.chmod(d, 0o755)
        if self.args.modules == "ours":
            for mod, lib in OUR_MODULES.items():
                dst = os.path.join(self.home, ".vu", "modules", mod + ".so")
                shutil.copy(os.path.join(self.release, lib), dst)
                os.chmod(dst, 0o755)
        self.work = os.path.join(self.dir, "work")
        # mnt/: the mount point the scripts use where the pages use /mnt
        os.makedirs(os.path.join(self.work, "mnt"))
        os.chmod(self.work, 0o777)
        print(f"== {name} tutorial, modules: {self.args.modules} (scratch {self.dir})")

    def check_prerequisites(self):
        if pexpect is None:
            skip("python3-pexpect is not installed (apt-get install python3-pexpect)")
        if shutil.which("umvu") is None:
            skip("umvu is not on PATH (VUOS is not installed)")
        self.cdir = next((d for d in C_MODULE_DIRS if os.path.exists(os.path.join(d, "vudev.so"))), None)
        if self.cdir is None:
            skip("umvu is installed but its modules (vudev.so, vufuse.so, vufs.so) are not found")
        if self.args.modules == "ours":
            here = os.path.dirname(os.path.abspath(__file__))
            repo = os.path.dirname(os.path.dirname(here))
            tgt = self.args.target_dir or os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target")
            self.release = os.path.join(tgt, "release")
            missing = [lib for lib in OUR_MODULES.values()
                       if not os.path.exists(os.path.join(self.release, lib))]
            if missing:
                skip(f"our modules are not built in {self.release} (missing {', '.join(missing)}); "
                     "run: cargo build --release -p vudevpartx -p vudevramdisk -p vudevvdi "
                     "-p vufusefatfs -p vufuseext2 -p vufs-module")

    def module_dir(self):
        """Where the submodules under test come from."""
        if self.args.modules == "ours":
            return os.path.join(self.home, ".vu", "modules")
        return self.cdir

    def start(self, title):
        self.section = title
        print(f"\n-- {title}")

    def record(self, step, ok, diffs=(), notes=(), status=None):
        status = status or ("PASS" if ok else "FAIL")
        self.results.append((self.section, step, status))
        print(f"{status}: {step}")
        for d in diffs:
            print(f"    | {d}")
        for n in notes:
            print(f"    note: {n}")
        return ok

    def skip_step(self, step, reason):
        self.results.append((self.section, step, "SKIP"))
        print(f"SKIP: {step}: {reason}")

    def session(self, user=None):
        return Session(self, user)

    def host(self, step, argv, expect=(), rc=0, exact=False, **kw):
        """A check run outside umvu (fsck, mtools, a checksum)."""
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=self.work, **kw)
        lines = [unbackspace(l) for l in p.stdout.rstrip("\n").split("\n")] if p.stdout.strip() else []
        ok, diffs, notes = compare(list(expect), lines, exact)
        if rc is not None and p.returncode != rc:
            ok = False
            diffs = [f"exit status {p.returncode}, expected {rc}"] + (diffs or [f"    {l}" for l in lines])
        if self.args.verbose:
            print(f"  (host) $ {' '.join(argv)}")
            for l in lines:
                print(f"  {l}")
        return self.record(step, ok, diffs, notes)

    def finish(self):
        if self.args.results:
            with open(self.args.results, "w") as f:
                for sec, step, status in self.results:
                    f.write(f"{sec}\t{step}\t{status}\n")
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        n = {s: sum(1 for r in self.results if r[2] == s) for s in ("PASS", "FAIL", "SKIP")}
        print(f"\n== {self.name} ({self.args.modules}): {n['PASS']} passed, {n['FAIL']} failed, "
              f"{n['SKIP']} skipped")
        sys.exit(1 if n["FAIL"] else 0)


class Session:
    """`umvu bash` under pexpect, prompt `vu$ `, in the tutorial's work dir."""

    def __init__(self, tut, user=None):
        self.tut = tut
        self.broken = None  # set when a command never came back to the prompt
        env = dict(os.environ)
        env.update(HOME=tut.home, PS1=PROMPT, PS2="", TERM="dumb", LC_ALL="C", LANG="C",
                   TZ="UTC", HISTFILE="")
        for k in ("LS_COLORS", "PROMPT_COMMAND", "BASH_ENV", "ENV"):
            env.pop(k, None)
        argv = ["umvu", "bash", "--norc", "--noprofile", "--noediting", "-i"]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=tut.work, encoding="utf-8",
                                   codec_errors="replace", timeout=60, dimensions=(24, 80))
        self.child.expect_exact(PROMPT, timeout=60)
        self.sh("stty -onlcr 2>/dev/null; stty cols 80 2>/dev/null; true")

    def sh(self, cmd, timeout=60):
        """Types cmd, returns its output lines (the echo removed)."""
        c = self.child
        c.sendline(cmd)
        c.expect_exact(PROMPT, timeout=timeout)
        out = c.before.replace("\r\n", "\n").replace("\r", "")
        lines = [unbackspace(l) for l in out.split("\n")]
        # the terminal echoes the typed line first (long lines may wrap)
        echo = cmd.split("\n")
        if lines and lines[0].strip() == echo[0].strip():
            lines = lines[len(echo):]
        else:
            while lines and lines[0].strip() and lines[0].strip() in cmd:
                lines = lines[1:]
        while lines and lines[-1] == "":
            lines.pop()
        if self.tut.args.verbose:
            print(f"  vu$ {cmd}")
            for l in lines:
                print(f"  {l}")
        return lines

    def step(self, name, cmd, expect=(), exact=False, rc=None, timeout=60, critical=False):
        """Types a tutorial command and compares its output; rc, when given,
        is checked with a following `echo $?`.  A critical step (a mount) that
        fails stops the session: the later steps are reported as not run."""
        if self.broken:
            return self.tut.record(name, False, [f"not run: {self.broken}"])
        try:
            lines = self.sh(cmd, timeout)
            status = None
            if rc is not None:
                status = int(self.sh("echo $?")[-1])
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            self.broken = f"the session is stuck since {cmd!r}"
            return self.tut.record(name, False, [f"{type(e).__name__} after {cmd!r}",
                                                 f"    {self.child.before[-400:]!r}"])
        ok, diffs, notes = compare(list(expect), lines, exact)
        if rc is not None and status != rc:
            ok = False
            diffs = [f"exit status {status}, expected {rc}"] + (diffs or [f"    {l}" for l in lines])
        if critical and not ok:
            self.broken = f"{name!r} failed"
        return self.tut.record(name, ok, diffs, notes)

    def dialog(self, name, cmd, exchanges, timeout=60):
        """An interactive program: for each (expected regex, answer) pair,
        wait for the regex, then type the answer.  Ends at the shell prompt."""
        c = self.child
        if self.broken:
            return self.tut.record(name, False, [f"not run: {self.broken}"]), []
        seen, rx = [], PROMPT
        try:
            c.sendline(cmd)
            ended = False
            for rx, answer in exchanges:
                # the program may end (back at the shell prompt) before asking
                i = c.expect([rx, re.escape(PROMPT)], timeout=timeout)
                if i == 1:
                    seen.append(c.before)
                    ended = True
                    break
                seen.append(c.before + c.after)
                c.sendline(answer)
            if not ended:
                rx = PROMPT
                c.expect_exact(PROMPT, timeout=timeout)
                seen.append(c.before)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            self.broken = f"the session is stuck since {cmd!r}"
            return self.tut.record(name, False, [f"{type(e).__name__} waiting for {rx!r}",
                                                 f"    {c.before[-400:]!r}"]), []
        text = "".join(seen).replace("\r\n", "\n").replace("\r", "")
        lines = [unbackspace(l) for l in text.split("\n")][1:]  # [0] is the echo
        if self.tut.args.verbose:
            print(f"  vu$ {cmd}")
            for l in lines:
                print(f"  {l}")
        return True, lines

    def dialog_step(self, name, cmd, exchanges, expect=(), timeout=60):
        """dialog(), then the whole conversation compared with expect."""
        ok, lines = self.dialog(name, cmd, exchanges, timeout)
        if not ok:
            return False
        ok, diffs, notes = compare(list(expect), lines, False)
        return self.tut.record(name, ok, diffs, notes)

    def modules(self, names):
        """Which file umvu mapped for each module: VUOS's dir for --modules c,
        the scratch HOME's .vu/modules for ours (vudev.so and vufuse.so are
        always VUOS's)."""
        step = f"modules loaded from the chosen set ({', '.join(names)})"
        if self.broken:
            return self.tut.record(step, False, [f"not run: {self.broken}"])
        try:
            maps = open(f"/proc/{self.child.pid}/maps").read()
        except OSError as e:
            return self.tut.record(step, False, [str(e)])
        mapped = set(l.split()[-1] for l in maps.splitlines() if l.endswith(".so") or ".so " in l)
        diffs = []
        for n in names:
            host = n in ("vudev", "vufuse")
            want = self.tut.cdir if host else self.tut.module_dir()
            files = sorted(p for p in mapped if os.path.basename(p) == n + ".so")
            if not files:
                diffs.append(f"{n}.so: not mapped by umvu")
            elif not any(os.path.dirname(p) == want for p in files):
                diffs.append(f"{n}.so: mapped from {files}, expected from {want}")
        return self.tut.record(step, not diffs, diffs)

    def close(self):
        c = self.child
        try:
            if self.broken:
                c.sendintr()
                c.sendline("")
            c.sendline("exit")
            c.expect(pexpect.EOF, timeout=20)
        except (pexpect.TIMEOUT, pexpect.EOF, OSError):
            pass
        if c.isalive():
            # umvu can leave helpers behind (shared/VUOS.md section 9): kill
            # this session's own process group, by its id.
            try:
                os.killpg(c.pid, 9)
            except OSError:
                pass
        c.close(force=True)
