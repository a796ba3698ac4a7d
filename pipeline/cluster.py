"""One way to find Ray for every command: ``connect(address)`` joins a cluster or starts a local Ray, in one line.

Resolution, first match wins:

1. ``--ray-address`` (the ``address`` argument), then ``RAY_ADDRESS`` (``ray job submit`` sets it for a job):
   ``local`` starts a Ray for this process, ``auto`` joins the cluster running on this machine (an error when none
   answers), ``host:port`` (a GCS) or ``ray://host:port`` (a Ray Client server) joins that cluster.
2. The cluster that ``ray start`` recorded in Ray's address file (``ray_current_cluster`` in Ray's temp dir,
   ``$RAY_TMPDIR/ray/`` when set), when its GCS accepts a connection. A file left behind by a stopped head is
   reported in one line and ignored: ``ray.init()`` would retry it for minutes.
3. A local Ray for this process: on 127.0.0.1 only, without a dashboard unless asked, with ``max(4, cores)`` logical CPUs (on 2
   cores, Train workers would otherwise deadlock against Ray Data's read tasks), ended with this process even when
   it is killed with SIGKILL.

The choice is printed in one line on stderr (``ray: joined the cluster at 10.0.1.5:6379 (64 CPUs, 8 GPUs; from
RAY_ADDRESS)``). ``in_ray_job`` and ``check_job_output`` refuse outputs that a job would write into Ray's session
directory, where they vanish with the job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

LOCAL, AUTO = "local", "auto"
ADDRESS_ENV = "RAY_ADDRESS"
CLIENT_SCHEME = "ray://"
MIN_LOCAL_CPUS = 4  # logical CPUs of a local Ray, at least: room for Ray Data beside Train workers on small hosts
PROBE_TIMEOUT_S = 1.5  # a GCS on a reachable host accepts within milliseconds; a dead one refuses at once
REAP_WINDOW_S = 10.0  # how long the watchdog keeps ending a dead driver's processes (some are still being spawned)

# Ray binds the machine's external interface unless this is "0"; its own processes read it when they start.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Set by Ray's job supervisor for a job's entrypoint (with the job's runtime env); RAY_JOB_ID in Ray's workers.
JOB_ENV = ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID")
JOB_DIR = "runtime_resources"  # a job's --working-dir is unpacked under <session>/runtime_resources/working_dir_files

_watchdogs: list[subprocess.Popen] = []  # their stdin pipes must stay open as long as this process lives


class ClusterError(ValueError):
    """Ray cannot be joined or started as asked, or a job's output would vanish; the message is one line."""


@dataclass(frozen=True)
class Choice:
    """What ``connect`` does: join ``address``, or start a local Ray when it is None; ``source`` says why."""

    address: str | None
    source: str
    note: str | None = None  # a line to print first (a stale address file)


def address_file() -> Path:
    """Ray's ``ray_current_cluster`` file, where ``ray start`` records the GCS address of the head it started."""
    from ray._common.utils import get_ray_address_file  # the same lookup as ray.init (RAY_TMPDIR, TMPDIR, /tmp)

    return Path(get_ray_address_file(None))


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port`` (IPv6 in brackets), else None."""
    rest = address.removeprefix(CLIENT_SCHEME).rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        return None
    return host, int(port)


def is_address(text: str) -> bool:
    """Whether ``text`` is a value ``--ray-address`` accepts: auto, local, host:port or ray://host:port."""
    return text in (AUTO, LOCAL) or host_port(text) is not None


ADDRESS_FORMS = "auto, local, host:port of a Ray head's GCS or ray://host:port"


def answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at the address within ``timeout`` seconds."""
    hp = host_port(address)
    if hp is None:
        return False
    try:
        socket.create_connection(hp, timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(address: str | None, env: Mapping[str, str] | None = None, recorded: Path | None = None,
            probe: Callable[[str], bool] = answers) -> Choice:
    """Where to find Ray: the flag, else RAY_ADDRESS, else a running recorded cluster, else a local Ray."""
    env = os.environ if env is None else env
    if address:
        given, source = address.strip(), "--ray-address"
    else:
        given, source = env.get(ADDRESS_ENV, "").strip(), ADDRESS_ENV
    if given == LOCAL:
        return Choice(None, source)
    if given and given != AUTO:
        if host_port(given) is None:
            raise ClusterError(f"bad {source} {given!r}: expected {ADDRESS_FORMS} (the dashboard's http:// address "
                               "is for `ray job submit`)")
        if not probe(given):
            raise ClusterError(f"no Ray cluster answers at {given} ({source}): start its head, or pass "
                               "--ray-address local for a Ray of this process")
        return Choice(given, source)
    file = address_file() if recorded is None else recorded
    try:
        found = file.read_text().strip()
    except OSError:
        found = ""
    if found and probe(found):
        return Choice(found, f"the running cluster recorded in {file}")
    if given == AUTO:
        raise ClusterError(f"{source} auto: no Ray cluster runs on this machine" +
                           (f" ({file} names {found}, where nothing answers)" if found else f" ({file} is missing)"))
    note = (f"ray: ignoring {file}: it names {found}, where no Ray answers (a head that stopped)" if found else None)
    return Choice(None, "default", note)


def default_cpus() -> int:
    """Logical CPUs of a local Ray: the cores, at least MIN_LOCAL_CPUS."""
    return max(MIN_LOCAL_CPUS, os.cpu_count() or 1)


def connect(address: str | None = None, *, local_cpus: int | None = None, dashboard: bool = False) -> str:
    """Join or start Ray as the module docstring says (nothing when this process is connected); the GCS address.
    ``dashboard``: a local Ray starts its dashboard (on 127.0.0.1), which serves Ray's state API."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    choice = resolve(address)
    if choice.note:
        print(choice.note, file=sys.stderr, flush=True)
    if choice.address is None:
        cpus = local_cpus or default_cpus()
        gcs, session = _start_local(cpus, dashboard)
        line = f"ray: started a local Ray at {gcs} ({cpus} CPUs, 127.0.0.1 only, ends with this process; {session})"
    else:
        gcs = _join(choice)
        total = ray.cluster_resources()
        line = (f"ray: joined the cluster at {choice.address} ({total.get('CPU', 0):g} CPUs, "
                f"{total.get('GPU', 0):g} GPUs; from {choice.source})")
    print(line, file=sys.stderr, flush=True)
    return gcs


def started_here() -> bool:
    """Whether this process started the Ray it uses (a local Ray on this machine, ended with this process)."""
    return bool(_watchdogs)


def _join(choice: Choice) -> str:
    import ray

    host = host_port(choice.address)[0]  # type: ignore[index]  # resolve() checked the form
    if host == "localhost" or host == "::1" or host.startswith("127."):
        _stay_on_loopback()  # else Ray rewrites 127.0.0.1 to this machine's external address, where nothing listens
    try:
        ray.init(address=choice.address, logging_level=logging.WARNING)
    except Exception as e:  # a refused token, a version mismatch, a head that died since the probe: one line
        raise ClusterError(f"cannot join the Ray cluster at {choice.address} ({choice.source}): "
                           f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    return choice.address if choice.address.startswith(CLIENT_SCHEME) else ray.get_runtime_context().gcs_address


def _start_local(cpus: int, dashboard: bool = False) -> tuple[str, str]:
    """Start a Ray on loopback for this process; (GCS address, session directory)."""
    import ray

    _stay_on_loopback()
    options: dict = {}
    if dashboard:
        # Ray's processes find the state API by looking for "the" Ray on this machine, which fails where another Ray
        # runs beside this one: name this Ray's dashboard to every process of the job.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        options = {"dashboard_port": port,
                   "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}
    context = ray.init(address=LOCAL, num_cpus=cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       logging_level=logging.WARNING, **options)
    info = context.address_info
    _start_watchdog(info["session_dir"])
    return info["gcs_address"], info["session_dir"]


def _stay_on_loopback() -> None:
    """Make Ray use 127.0.0.1 as this node's address, in this process and in the processes it starts."""
    from ray._private import ray_constants

    os.environ[LOOPBACK_ENV] = "0"  # the GCS, raylet, agents and workers read it when they start
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read it when ray was imported


# ---- ending a local Ray with its driver ------------------------------------------------------------------------------
# Ray starts the head's own processes (GCS, raylet, log monitor, ...) with PR_SET_PDEATHSIG, so they die with the
# driver. The dashboard and runtime-env agents are started by the raylet: they poll for its death and then try to
# report it to the GCS, which is dead too, for up to 60 s (gcs_client.publish_error's timeout in
# ray/_private/process_watcher.py) -- unless the raylet logged a SIGTERM, which a SIGKILL never does. A watchdog that
# outlives the driver ends what is left of that one session.


def _start_watchdog(session_dir: str) -> None:
    """A process that, when this one dies (SIGKILL included), ends every process of the Ray session."""
    if not Path("/proc").is_dir():  # the watchdog finds the session's processes through /proc (Linux)
        return
    # -I: stdlib only, no script directory on sys.path (this file's neighbours are not stdlib modules).
    proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), "--reap", session_dir,
                             str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # a Ctrl-C or a killed process group must not end it first
    _watchdogs.append(proc)


def session_pids(session_dir: str) -> list[int]:
    """Processes (of this user) whose command line or open files are in the Ray session directory."""
    here = os.path.realpath(session_dir)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if here in cmdline or session_dir in cmdline:
                found.append(int(entry.name))
                continue
            for fd in os.scandir(Path(entry.path, "fd")):  # the agents' and workers' logs, after setproctitle
                if os.readlink(fd.path).startswith(here + os.sep):
                    found.append(int(entry.name))
                    break
        except OSError:  # gone, or not ours
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet waited for, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(session_dir: str, driver: int) -> None:
    """Wait until the driver is gone, then SIGKILL the session's processes until none is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # EOF: the driver died, or is exiting and closed its end on the way out
        pass
    while _alive(driver):  # an exiting driver shuts its Ray down itself (atexit): let it finish
        time.sleep(0.1)
    deadline = time.monotonic() + REAP_WINDOW_S
    while time.monotonic() < deadline:
        pids = session_pids(session_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


# ---- jobs ------------------------------------------------------------------------------------------------------------


def in_ray_job(env: Mapping[str, str] | None = None, cwd: str | None = None) -> str | None:
    """How this process is inside a Ray job (``ray job submit``), or None: the env Ray sets, or the working dir."""
    env = os.environ if env is None else env
    for name in JOB_ENV:
        if env.get(name):
            return f"{name} is set"
    cwd = os.getcwd() if cwd is None else cwd
    if JOB_DIR in Path(cwd).parts:
        return f"the working directory {cwd} is Ray's"
    return None


def local_path(uri: str) -> str | None:
    """The local filesystem path a storage or tracking URI names (``sqlite:///x.db``, ``file:x``, ``x``), else None."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):]
    if uri.startswith("file:"):
        return uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]
    return None if "://" in uri or uri.startswith("sqlite:") else uri


def check_job_output(flag: str, uri: str, instead: str, env: Mapping[str, str] | None = None,
                     cwd: str | None = None) -> None:
    """Inside a Ray job, refuse a relative local output: it would land in Ray's session directory and vanish."""
    path = local_path(uri)
    if path is None or os.path.isabs(os.path.expanduser(path)):
        return
    why = in_ray_job(env, cwd)
    if why is not None:
        raise ClusterError(f"{flag} {uri} is relative: inside a Ray job ({why}) it would be written under Ray's "
                           f"session directory and vanish with the job; pass {instead}")


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    _reap(sys.argv[2], int(sys.argv[3]))
