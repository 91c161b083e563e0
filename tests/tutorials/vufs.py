#!/usr/bin/env python3
"""The vufs tutorial (virtualsquare.github.io tutorials/vufs.md), replayed in umvu.

    tests/tutorials/vufs.py --modules c      # VUOS's vufs.so
    tests/tutorials/vufs.py --modules ours   # this workspace's vufs.so (see vututor.py)

`vumount -t vufs -o MODE A B` puts directory A over directory B.  The page
names them /tmp/a and /tmp/b; the scripts use a scratch directory, $PWD/a and
$PWD/b (vumount wants absolute sources), and check each mode's rule from
outside umvu afterwards:

  bind    A replaces B; B's own files are not reachable
  merge   A over B; A is read-only, new files and changes go to B
  cow     A over B; B is never written, changes are copied up into A
  mincow  A over B; B is written where the user may, else copied up into A

Then the page's two "magic" examples: directories that disappear (bind with
except=) and virtually editing system files (mincow over /).  The page runs
them as an ordinary user; so do these scripts (as nobody, or daemon, with setpriv), so
that mincow cannot write the real /etc: the real /etc/passwd and
/etc/protocols are checked unchanged at the end.  docs/TUTORIAL-VUOS.md is
the readable form of the same session.
"""

import hashlib
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vututor import L, R, Tutorial  # noqa: E402

NOBODY = 65534
# The system-file example deletes the user's own line from /etc/passwd; glibc's
# nss-systemd (in Debian's nsswitch.conf) always makes up "nobody", so that
# example runs as another unprivileged user, daemon (uid 1).
USER, USER_ID = "daemon", 1
DATE = r"\w{3} [ \d]\d +[\d:]+"

t = Tutorial("vufs", __doc__)
W = t.work


def tree(top):
    """{relative path: content or 'dir'} of a host directory."""
    out = {}
    for root, dirs, files in os.walk(top):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), top)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, top)] = open(p, "rb").read()
    return out


def layers(prefix=""):
    """a = {both, only_in_a}, b = {both, only_in_b, sub/c}."""
    a, b = os.path.join(W, prefix + "a"), os.path.join(W, prefix + "b")
    for d in (a, b, os.path.join(b, "sub")):
        os.makedirs(d)
    for path, text in ((a, "both"), (a, "only_in_a"), (b, "both"), (b, "only_in_b"), (b, "sub/c")):
        with open(os.path.join(path, text), "w") as f:
            f.write(f"{text} from {os.path.basename(path)[-1]}\n")
    return a, b


def check_tree(step, top, want):
    seen = tree(top)
    want = {k: (v if v == "dir" else v.encode()) for k, v in want.items()}
    diffs = [f"{k}: expected {want.get(k)!r}, seen {seen.get(k)!r}"
             for k in sorted(set(seen) | set(want)) if seen.get(k) != want.get(k)]
    t.record(step, not diffs, diffs)


B_TREE = {"both": "both from b\n", "only_in_b": "only_in_b from b\n", "sub": "dir", "sub/c": "sub/c from b\n"}
A_TREE = {"both": "both from a\n", "only_in_a": "only_in_a from a\n"}

# ---------------------------------------------------------------- bind
t.start("bind mode: A replaces B")
layers()
s = t.session()
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
s.modules(["vufs"])
s.step("vumount -t vufs a b", "vumount -t vufs $PWD/a $PWD/b", [], exact=True, critical=True)
s.step("ls b shows a", "ls $PWD/b", [L("both  only_in_a")], exact=True)
s.step("cat b/both is a's", "cat $PWD/b/both", [L("both from a")], exact=True)
s.step("b's own files are not reachable", "cat $PWD/b/only_in_b",
       [R(r"cat: /.*/b/only_in_b: No such file or directory")], exact=True, rc=1)
s.step("a new file", "echo new > $PWD/b/new", [], exact=True, rc=0)
s.step("vuumount b", "vuumount $PWD/b", [], exact=True)
s.step("vumount -t vufs -o bind a b (the same)", "vumount -t vufs -o bind $PWD/a $PWD/b", [], exact=True, critical=True)
s.step("ls b shows a", "ls $PWD/b", [L("both  new  only_in_a")], exact=True)
s.step("vuumount b", "vuumount $PWD/b", [], exact=True)
s.close()
check_tree("(outside) the new file went to a", os.path.join(W, "a"), dict(A_TREE, new="new\n"))
check_tree("(outside) b is untouched", os.path.join(W, "b"), B_TREE)

# ---------------------------------------------------------------- merge
t.start("merge mode: A (read-only) over B, updates in B")
layers("m")
s = t.session()
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
s.step("vumount -t vufs -o merge ma mb", "vumount -t vufs -o merge $PWD/ma $PWD/mb", [], exact=True, critical=True)
s.step("ls mb: the union", "ls $PWD/mb", [L("both  only_in_a  only_in_b  sub")], exact=True)
s.step("ma prevails", "cat $PWD/mb/both", [L("both from a")], exact=True)
s.step("files from ma are read-only", "echo more >> $PWD/mb/only_in_a",
       [R(r"bash: /.*/mb/only_in_a: Read-only file system")], exact=True, rc=1)
s.step("new files go to mb", "echo new > $PWD/mb/new", [], exact=True, rc=0)
s.step("changes go to mb", "echo changed > $PWD/mb/only_in_b", [], exact=True, rc=0)
s.step("vuumount mb", "vuumount $PWD/mb", [], exact=True)
s.close()
check_tree("(outside) ma is untouched", os.path.join(W, "ma"), A_TREE)
check_tree("(outside) mb has the new and the changed file", os.path.join(W, "mb"),
           dict(B_TREE, new="new\n", only_in_b="changed\n"))

# ---------------------------------------------------------------- cow
t.start("cow mode: A over B, B never written, copy-on-write into A")
layers("c")
s = t.session()
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
s.step("vumount -t vufs -o cow ca cb", "vumount -t vufs -o cow $PWD/ca $PWD/cb", [], exact=True, critical=True)
s.step("ls cb: the union", "ls $PWD/cb", [L("both  only_in_a  only_in_b  sub")], exact=True)
s.step("change a file of cb", "echo changed > $PWD/cb/only_in_b", [], exact=True, rc=0)
s.step("a new file", "echo new > $PWD/cb/new", [], exact=True, rc=0)
s.step("remove a file of cb", "rm $PWD/cb/sub/c", [], exact=True, rc=0)
s.step("the view", "ls $PWD/cb $PWD/cb/sub; cat $PWD/cb/only_in_b",
       [R(r"/.*/cb:"), L("both  new  only_in_a  only_in_b  sub"), L(""), R(r"/.*/cb/sub:"), L("changed")],
       exact=True)
s.step("vuumount cb", "vuumount $PWD/cb", [], exact=True)
s.close()
check_tree("(outside) cb is untouched", os.path.join(W, "cb"), B_TREE)
ca = tree(os.path.join(W, "ca"))
want = {"only_in_b": b"changed\n", "new": b"new\n", "both": b"both from a\n", "only_in_a": b"only_in_a from a\n"}
diffs = [f"ca/{k}: expected {v!r}, seen {ca.get(k)!r}" for k, v in want.items() if ca.get(k) != v]
diffs += [f"ca/.-/sub/c (the whiteout of sub/c) missing; ca holds {sorted(ca)}"] if ".-/sub/c" not in ca else []
t.record("(outside) ca has the copy-up, the new file and the whiteout .-/sub/c", not diffs, diffs)

# ---------------------------------------------------------------- mincow
t.start("mincow mode (as nobody): B written where permitted, else copy-up into A")
xa, xb = os.path.join(W, "xa"), os.path.join(W, "xb")
os.makedirs(xa)
os.makedirs(xb)
os.chown(xa, NOBODY, NOBODY)
for name, mode in (("shared", 0o666), ("readonly", 0o644)):
    with open(os.path.join(xb, name), "w") as f:
        f.write(f"{name} from b\n")
    os.chmod(os.path.join(xb, name), mode)
os.chmod(xb, 0o755)
s = t.session(user=NOBODY)
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
s.step("vumount -t vufs -o mincow xa xb", "vumount -t vufs -o mincow $PWD/xa $PWD/xb", [], exact=True, critical=True)
s.step("write a file nobody may write", "echo more >> $PWD/xb/shared", [], exact=True, rc=0)
s.step("write a file nobody may not write", "echo more >> $PWD/xb/readonly", [], exact=True, rc=0)
s.step("create in a dir nobody may not write", "echo new > $PWD/xb/new", [], exact=True, rc=0)
s.step("the view", "cat $PWD/xb/shared $PWD/xb/readonly $PWD/xb/new",
       [L("shared from b"), L("more"), L("readonly from b"), L("more"), L("new")], exact=True)
s.step("the copy keeps its owner (virtually)", "ls -l $PWD/xb/readonly",
       [R(rf"-rw-r--r-- 1 root root 21 {DATE} /.*/xb/readonly")], exact=True)
s.step("vuumount xb", "vuumount $PWD/xb", [], exact=True)
s.close()
check_tree("(outside) xb: shared changed in place, readonly untouched", xb,
           {"shared": "shared from b\nmore\n", "readonly": "readonly from b\n"})
xat = tree(xa)
want = {"readonly": b"readonly from b\nmore\n", "new": b"new\n"}
diffs = [f"xa/{k}: expected {v!r}, seen {xat.get(k)!r}" for k, v in want.items() if xat.get(k) != v]
diffs += [f"xa/shared should not exist (seen {xat.get('shared')!r})"] if "shared" in xat else []
t.record("(outside) xa: the copy of readonly and the new file", not diffs, diffs)

# ---------------------------------------------------------------- disappearing directories
t.start("some magic: disappearing directories (bind, except=/spool), as nobody")
env80 = dict(os.environ, COLUMNS="80", LC_ALL="C", TZ="UTC")
ls_var = subprocess.run(["ls", "-C", "/var"], stdout=subprocess.PIPE, text=True, env=env80).stdout.split("\n")
ls_spool = subprocess.run(["ls", "-l", "/var/spool"], stdout=subprocess.PIPE, text=True,
                          env=env80).stdout.split("\n")
ls_var, ls_spool = [L(x.expandtabs(8)) for x in ls_var if x], [L(x.expandtabs(8)) for x in ls_spool if x]
s = t.session(user=NOBODY)
s.step("ls /var", "ls /var", ls_var, exact=True)
s.step("ls -l /var/spool", "ls -l /var/spool", ls_spool, exact=True)
s.step("mkdir var var/spool", "mkdir $PWD/var; mkdir $PWD/var/spool", [], exact=True, rc=0)
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
s.step("vumount -t vufs -o bind,except=/spool var /var", "vumount -t vufs -o bind,except=/spool $PWD/var /var",
       [], exact=True, critical=True)
s.step("ls /var: only spool", "ls /var", [L("spool")], exact=True)
s.step("ls -l /var/spool: the real one", "ls -l /var/spool", ls_spool, exact=True)
s.close()

# ---------------------------------------------------------------- system files
t.start(f"(virtually) modify system files: mincow over /, as {USER}")
REAL = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in ("/etc/passwd", "/etc/protocols")}
STAT = {p: (os.stat(p).st_mode, os.stat(p).st_uid) for p in REAL}
os.makedirs(os.path.join(W, "newroot"))
os.chown(os.path.join(W, "newroot"), USER_ID, USER_ID)
s = t.session(user=USER_ID)
s.step("vu_insmod vufs (missing on the page here)", "vu_insmod vufs", [], exact=True, rc=0)
ok = s.step("vumount -t vufs -o mincow,except=/tmp,except=/proc newroot /",
            "vumount -t vufs -o mincow,except=/tmp,except=/proc $PWD/newroot /", [], exact=True)
if ok:
    s.step("delete the user's line from /etc/passwd (the page uses nano)", f"sed -i '/^{USER}:/d' /etc/passwd",
           [], exact=True, rc=0)
    s.step("whoami", "whoami", [L(f"whoami: cannot find name for user ID {USER_ID}",
                                  wiki="whoami: cannot find name for user ID 1000")], exact=True, rc=1)
else:
    t.skip_step("sed, whoami", "the mount failed: not editing the real /etc")
s.close()
os.makedirs(os.path.join(W, "newroot2"))
os.chown(os.path.join(W, "newroot2"), USER_ID, USER_ID)
s = t.session(user=USER_ID)
s.step("vu_insmod vufs", "vu_insmod vufs", [], exact=True, rc=0)
ok = s.step("vumount -t vufs -o mincow newroot2/ /", "vumount -t vufs -o mincow $PWD/newroot2/ /", [], exact=True)
if ok:
    s.step("ls -l /etc/protocols", "ls -l /etc/protocols",
           [R(rf"-rw-r--r-- 1 root root \d+ {DATE} /etc/protocols",
              wiki="-rw-r--r-- 1 root root 2932 Apr  1  2013 /etc/protocols")], exact=True)
    s.dialog_step("rm /etc/protocols, answering y", "rm /etc/protocols",
                  [(r"rm: remove write-protected regular file '/etc/protocols'\? ", "y")],
                  [L("rm: remove write-protected regular file '/etc/protocols'? y")])
    s.step("ls -l /etc/protocols: gone", "ls -l /etc/protocols",
           [L("ls: cannot access '/etc/protocols': No such file or directory")], exact=True, rc=2)
    s.step("ls -l /etc/passwd", "ls -l /etc/passwd",
           [R(rf"-rw-r--r-- 1 root root \d+ {DATE} /etc/passwd",
              wiki="-rw-r--r-- 1 root root 1689 Jul 22 16:10 /etc/passwd")], exact=True)
    s.step(f"chown {USER} /etc/passwd (the page: chown user)", f"chown {USER} /etc/passwd", [], exact=True, rc=0)
    s.step("chmod 600 /etc/passwd", "chmod 600 /etc/passwd", [], exact=True, rc=0)
    s.step(f"ls -l /etc/passwd: virtually {USER}'s, 600", "ls -l /etc/passwd",
           [R(rf"-rw------- 1 {USER} root \d+ {DATE} /etc/passwd",
              wiki="-rw------- 1 user root 1689 Jul 22 16:10 /etc/passwd")], exact=True)
else:
    t.skip_step("rm, chown, chmod", "the mount failed: not touching the real /etc")
s.close()
diffs = []
for p, h in REAL.items():
    st = os.stat(p)
    if hashlib.sha256(open(p, "rb").read()).hexdigest() != h or (st.st_mode, st.st_uid) != STAT[p]:
        diffs.append(f"{p} changed on the host!")
t.record("(outside) the real /etc/passwd and /etc/protocols are unchanged", not diffs, diffs)
nr = tree(os.path.join(W, "newroot2"))
ok = ".-/etc/protocols" in nr and ".-/etc/passwd\x7f" in nr
t.record("(outside) newroot2 holds the whiteout and the vstat of /etc/passwd", ok,
         [] if ok else [f"newroot2 holds {sorted(nr)}"])

t.finish()
