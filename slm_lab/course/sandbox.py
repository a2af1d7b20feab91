"""The sandbox a graded kernel runs in: bubblewrap (`bwrap`), then `prlimit`, then `setpriv`.

What the kernel sees and may do:
- a file system of its own, built from read-only binds of what Python needs (/usr, /etc, the interpreter,
  the virtual environment, the slm_lab package, the course cache) and nothing else: the project's
  `solutions/`, the other submissions, the gradebook and the instructor's home are not there at all;
- writable: only its scratch folder (a copy of the submission's folder) and the folder of its sockets;
  /tmp is a fresh tmpfs;
- no network (its own network namespace: only a loopback of its own), its own pid, IPC, UTS and cgroup
  namespaces, so it sees no other process and nothing it starts outlives it (the pid namespace dies with
  its first process, which dies with the grader: --die-with-parent);
- started as root, it runs as uid/gid 65534 (`nobody`) with no capabilities and an empty bounding set
  (`setpriv --inh-caps=-all --bounding-set=-all --no-new-privs`): bubblewrap alone, started as root, keeps
  its capabilities, and a remount would make its root writable. Started by another user it uses a user
  namespace instead (`--unshare-user`, no capabilities);
- the environment is an allow-list (ALLOWED_ENV plus what the grader sets);
- limits (`prlimit`): address space `memory_gb`, `max_processes` processes for the uid, files up to
  `max_file_mb`, no core dumps.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UID = GID = 65534
ALLOWED_ENV = ("LANG", "LC_ALL", "TZ", "SLM_LAB_THREADS", "OMP_NUM_THREADS", "TRITON_INTERPRET")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"


@dataclass(frozen=True)
class Limits:
    memory_gb: float = 16.0
    max_processes: int = 256
    max_file_mb: int = 1024


def _python_roots() -> list[str]:
    """Folders the interpreter, its standard library and the installed packages live in."""
    import slm_lab

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             str(Path(slm_lab.__file__).resolve().parent)}
    for p in sys.path:                          # site-packages and friends (not the project: only slm_lab above)
        if p and os.path.isdir(p) and "site-packages" in p:
            roots.add(os.path.realpath(p))
    return sorted(r for r in roots if os.path.isdir(r))


def _system_binds() -> list[str]:
    args = []
    for d in ("/usr", "/etc", "/opt"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def _under(p: str, q: str) -> bool:
    return p != q and p.startswith(q.rstrip("/") + "/")


def command(argv: list[str], *, work: Path, writable: tuple[Path, ...] = (), readable: tuple[Path, ...] = (),
            env: dict[str, str] | None = None, limits: Limits | None = None) -> list[str]:
    """The command line that runs argv in the sandbox, in `work` (see the module docstring)."""
    limits = limits or Limits()
    root = os.geteuid() == 0
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--hostname", "graded",
           *_system_binds()]
    binds = [p for p in [*_python_roots(), *map(str, readable)] if os.path.exists(p)]
    binds = [p for p in dict.fromkeys(binds) if not any(_under(p, q) for q in binds if q != p)]
    rw = [str(p) for p in (work, *writable)]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    # the folders above each bind, searchable (bwrap would make them 0700, which uid 65534 cannot enter)
    above = {str(a) for p in binds + rw for a in Path(p).parents if str(a) not in ("/", "/tmp")}
    for a in sorted(above, key=lambda a: (a.count("/"), a)):
        if not any(a == q or _under(a, q) for q in binds + ["/usr", "/etc", "/opt"]):
            cmd += ["--perms", "0755", "--dir", a]
    for p in binds:
        cmd += ["--ro-bind", p, p]
    for p in rw:
        cmd += ["--bind", p, p]
    cmd += ["--chdir", str(work), "--clearenv"]
    base = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp",
            "XDG_CACHE_HOME": "/tmp/.cache", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
            "IPYTHONDIR": "/tmp/.ipython", "JUPYTER_RUNTIME_DIR": "/tmp/.jupyter"}
    base.update({k: os.environ[k] for k in ALLOWED_ENV if k in os.environ})
    for k, v in {**base, **(env or {})}.items():
        cmd += ["--setenv", k, v]
    if not root:
        cmd += ["--unshare-user", "--uid", str(UID), "--gid", str(GID), "--cap-drop", "ALL"]
    cmd += ["--", "prlimit", f"--as={int(limits.memory_gb * 2**30)}", f"--nproc={limits.max_processes}",
            f"--fsize={limits.max_file_mb * 2**20}", "--core=0", "--"]
    if root:
        cmd += ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    return cmd + list(argv)


def prepare(*folders: Path) -> None:
    """Make folders writable by the sandbox's uid (only needed when the grader runs as root)."""
    if os.geteuid() != 0:
        return
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
                os.lchown(name, UID, GID)


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """None when the sandbox works here, else one sentence saying why not."""
    if not sys.platform.startswith("linux"):
        return f"the grading sandbox needs Linux (this is {sys.platform})"
    for tool in ("bwrap", "prlimit") + (("setpriv",) if os.geteuid() == 0 else ()):
        if shutil.which(tool) is None:
            return f"{tool} is not installed, so submissions cannot be sandboxed; {INSTALL_HINT}" if tool == "bwrap" \
                else f"{tool} (util-linux) is not installed, so submissions cannot be sandboxed"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slm-lab-sandbox-") as d:
        probe = "import os; print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
        prepare(Path(d))
        try:
            res = subprocess.run(command([sys.executable, "-c", probe], work=Path(d)), capture_output=True,
                                 text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the sandbox does not start here ({type(exc).__name__})"
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            return f"the sandbox does not start here: {last[:160]}"
        uid, caps = (res.stdout.split() + ["?", "?"])[:2]
        if uid != str(UID) or caps.strip("0"):
            return f"the sandbox does not drop privileges here (uid {uid}, capabilities {caps})"
    return None


def describe() -> str:
    """One line for `slm-lab doctor`."""
    why = unavailable()
    if why:
        return f"not available: {why}; `slm-lab grade` then runs only with --no-sandbox"
    return (f"bubblewrap: uid {UID}, no capabilities, no network, own pid namespace, read-only system, "
            f"only scratch writable")
