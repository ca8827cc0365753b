"""Content-keyed caches: a Verilator build or a generated accelerator is reused when the digest of
everything it was made from says nothing changed.

Verilator's own rebuild check cannot be trusted for these designs: it records a content hash
only for small input files, so a large `epim_net.v` that is rewritten with the same bytes (a new
mtime) triggers a full C++ rebuild. Here a build is named by a SHA-256 of its Verilog sources,
its top module, the Verilator options and the tool versions; a folder whose stamp file carries
that digest is a complete build and is reused without calling Verilator at all. The stamp is
written last, so a build that was interrupted has none and is redone. An exclusive lock per
build (``fcntl.flock``) lets several runs share one cache: the second waits for the first and
then finds its stamp.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from ..contract.files import NotOwned, atomic_write, load_json, read_owner, stamp_new_folder
from ..sw.chip.progress import bar as progress_bar
from .verilator import setup_environment

STAMP = "epim-build.json"

# Options measured on the MNIST accelerator (docs/network.md, "Builds and caches"): only the
# top module's ports are public (the testbench reads nothing else; cocotb's runner asks for
# every signal with --public-flat-rw, which keeps Verilator from optimising the crossbar logic:
# 2.4x the C++ and 9x the simulation time). -O3 and --x-assign fast did not pay.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-O2", "--no-public-flat-rw", "--public-depth", "1")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def build_key(sources: list[Path], top: str, args: tuple[str, ...], waves: bool) -> str:
    """The digest that names a build: sources, top, options, make flags and tool versions."""
    setup_environment()
    parts = {"sources": file_digest(sources), "top": top, "args": list(args), "waves": waves,
             "makeflags": os.environ.get("MAKEFLAGS", ""),
             "verilator": _version("verilator"), "cocotb": _version("cocotb")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the duration of the block: a folder (which must
    exist), or a lock file (created if missing)."""
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def read_stamp(folder: Path) -> dict | None:
    try:  # (a regular file only: a FIFO in its place would block)
        stamp = load_json(folder / STAMP, "a build stamp", 2**20)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(folder: Path, stamp: dict) -> None:
    atomic_write(folder / STAMP, json.dumps(stamp, indent=1) + "\n")


def threads_arg() -> tuple[str, ...]:
    """`--threads N` from EPIM_VERILATOR_THREADS (default 1: the measured best on 2 cores)."""
    n = os.environ.get("EPIM_VERILATOR_THREADS", "1")
    return ("--threads", n) if n not in ("", "1") else ()


def verilator_build(sources: list[Path], top: str, cache_root: str | Path, waves: bool = False,
                    log: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The build folder of a Verilator model of `sources` with top `top` under `cache_root`,
    building it only when no complete build with the same key is there. Returns
    `(build_dir, built)`; `built` is False when the cache had it."""
    from cocotb_tools.runner import get_runner

    cache_root = Path(cache_root).resolve()
    sources = [Path(s).resolve() for s in sources]
    args = VERILATOR_ARGS + threads_arg()
    key = build_key(sources, top, args, waves)
    build_dir = cache_root / f"{top.removeprefix('epim_')}-{key[:16]}"
    with locked(cache_root / f".{build_dir.name}.lock"):
        stamp = read_stamp(build_dir)
        exe = build_dir / top
        if stamp and stamp.get("key") == key and exe.exists():
            if log:
                log(f"Verilator build {build_dir.name}: cached, not rebuilt")
            return build_dir, False
        if build_dir.exists() or build_dir.is_symlink():
            if read_owner(build_dir) is None and not (build_dir / STAMP).is_file():
                raise NotOwned(f"{build_dir}: a folder that EPIM did not make has the name of "
                               "a Verilator build; move it away")
            shutil.rmtree(build_dir)  # an interrupted or outdated build: start clean
        build_dir.mkdir(parents=True)
        stamp_new_folder(build_dir, "verilator build")
        if log:
            log(f"Verilator build {build_dir.name}: building {top} "
                f"({sum(s.stat().st_size for s in sources) / 1e6:.1f} MB of Verilog)")
        t0 = time.time()
        runner = get_runner("verilator")
        run_with_progress(build_dir, lambda: runner.build(
            sources=[str(s) for s in sources], hdl_toplevel=top, build_dir=str(build_dir),
            build_args=list(args), waves=waves, timescale=("1ns", "1ps"),
            log_file=str(build_dir / "build.log")))
        write_stamp(build_dir, {"key": key, "top": top, "sources": [str(s) for s in sources],
                                "args": list(args), "waves": waves,
                                "seconds": round(time.time() - t0, 1)})
    return build_dir, True


def run_polling(work: Callable[[], None], poll: Callable[[], None], every: float = 0.5) -> None:
    """Run `work` in a thread and call `poll` every `every` seconds until it ends; an
    exception `work` raised is raised again here."""
    failure: list[BaseException] = []

    def target():
        try:
            work()
        except BaseException as exc:  # noqa: B036 (raised again in the waiting thread)
            failure.append(exc)

    before = child_processes()
    worker = threading.Thread(target=target)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(every)
            poll()
    except BaseException:
        # Ctrl-C, or SIGTERM (which `epim` turns into an exit): the thread's build or simulator
        # would outlive this process, so stop what it started
        stop_processes(new_processes(before))
        raise
    if failure:
        raise failure[0]


def child_processes() -> list:
    """This process's descendants now (psutil processes; [] where psutil is missing)."""
    try:
        import psutil  # a dependency of distributed, in the sim extra
    except ImportError:
        return []
    return psutil.Process().children(recursive=True)


def new_processes(before: list) -> list:
    """Descendants of this process that were not among `before` (a `child_processes()` list),
    less multiprocessing's resource tracker, which this process keeps for its own use."""
    known = {(p.pid, _created(p)) for p in before}
    out = []
    for p in child_processes():
        if (p.pid, _created(p)) in known:
            continue
        try:
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except Exception:  # noqa: BLE001 (gone, or not ours to read: leave it)
            continue
        out.append(p)
    return out


def _created(p) -> float:
    try:
        return p.create_time()
    except Exception:  # noqa: BLE001 (gone)
        return 0.0


def stop_processes(procs: list, grace: float = 3.0) -> None:
    """Terminate the psutil processes `procs` that are still running, and any they started
    since they were listed, then kill those that have not ended after `grace` seconds."""
    if not procs:
        return
    import psutil

    everyone = {p.pid: p for p in procs}
    for p in procs:
        try:
            everyone.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    alive = []
    for p in everyone.values():
        try:
            p.terminate()
            alive.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def run_with_progress(build_dir: Path, build: Callable[[], None]) -> None:
    """Run `build` while a progress bar follows the build folder: Verilator's translation
    first, then the C++ files compiled out of those it wrote."""
    with progress_bar(None, "verilating", "file") as bar:
        def poll() -> None:
            if bar.total is None and (build_dir / "Vtop.mk").exists():
                bar.total = len(list(build_dir.glob("Vtop*.cpp")))
                bar.set_description("C++ compile")
            if bar.total is not None:
                bar.update(min(bar.total, len(list(build_dir.glob("Vtop*.o")))) - bar.n)
            else:
                bar.refresh()
        run_polling(build, poll)


def code_digest(package: Path) -> str:
    """SHA-256 of a package's Python sources: the generator's own version, so a changed
    generator never reuses Verilog emitted by the old one."""
    return file_digest(sorted(package.glob("*.py")))


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux `renameat2` with `RENAME_EXCHANGE`); False
    where the system has no such call, so the caller falls back to two renames."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(staging: Path, target: Path) -> None:
    """Put the folder `staging` in the place of `target` at once: a reader (or a run killed at
    any point) sees the old `target` or the new one, never a mix. The old folder is removed."""
    if not target.exists():
        os.rename(staging, target)
        return
    if exchange(staging, target):
        shutil.rmtree(staging)  # (now the old folder)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)  # (a kill here leaves no target: the next run finds none)
    os.rename(staging, target)
    shutil.rmtree(old)


def remove_leftovers(target: Path) -> None:
    """Staging and old folders that killed runs left beside `target` (only those that carry
    EPIM's stamp: a user's folder of a similar name is left alone)."""
    for pattern in (f".{target.name}.staging-*", f".{target.name}.old-*"):
        for p in target.parent.glob(pattern):
            if not p.is_dir() or p.is_symlink():
                continue
            # EPIM's stamp, or (killed before the stamp was in place) nothing but the
            # writer's temporary files
            if read_owner(p) is not None or all(
                    q.name.startswith(".") and q.name.endswith(".tmp") for q in p.iterdir()):
                shutil.rmtree(p, ignore_errors=True)
