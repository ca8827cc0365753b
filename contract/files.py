"""Files a user hands in, and files EPIM writes: the one reader and the one writer.

Reading (`read_regular`, `open_regular`, `load_json`): a path must name a regular file. It is
checked with `stat` before it is opened, and again on the open descriptor, so a FIFO, a device
(`/dev/zero`), a socket or a folder is refused with one line instead of blocking or reading
forever. Its size is bounded before a byte is read. JSON is decoded with duplicate keys,
numbers past `MAX_JSON_DIGITS` digits, non-finite numbers and nesting past `MAX_JSON_DEPTH`
refused, each naming the file.

Writing (`atomic_write`, `write_files_atomically`): a temporary file in the same folder, its
data flushed and fsynced, then renamed over the final name. A failure at any point (a full disk
included) removes the temporary file and leaves the final name as it was.

Output folders (`claim_folder`, `write_owned`, `may_replace`): a folder that EPIM writes into is
recognised as EPIM's own by its stamp, `.epim-owner.json`, which lists what EPIM wrote there. A
new or empty folder is claimed; a non-empty folder without the stamp is refused, naming it; a
file is written into an owned folder only when its name is new or listed, and only listed files
are ever replaced or removed. So a command never deletes or overwrites a file that it did not
write. (A single output file that the user names, `--json r.json`, is replaced: the user asked
for it.)

Standard library only: `sw/`, `hw/` and `app/` all use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

MAX_JSON_DEPTH = 32  # a network file nests 8 deep (layers, epitome, 4-D weights)
MAX_JSON_DIGITS = 40  # no number in an EPIM file needs more (bounds are below 2**64)
MAX_SMALL_JSON = 16 * 2**20  # a configuration, fault map, search result or report


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | Path, what: str, max_bytes: int,
                 error: type[Exception] = ValueError) -> Iterator[IO[bytes]]:
    """Open `path` for reading as a binary file object, refusing (with `error`, one line naming
    the file) anything that is not a regular file of at most `max_bytes` bytes, before it is
    opened: a FIFO would block `open`, a device would never end."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {what} must be a regular file, not {_kind(st.st_mode)}")
    try:  # non-blocking: should it have become a FIFO since, the open still returns
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} must be a regular file, not {_kind(st.st_mode)}")
        if st.st_size > max_bytes:
            raise error(f"{path}: {what} of {st.st_size} bytes is larger than the limit of "
                        f"{_size(max_bytes)}")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def read_regular(path: str | Path, what: str, max_bytes: int,
                 error: type[Exception] = ValueError) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see `open_regular`)."""
    with open_regular(path, what, max_bytes, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    if len(data) > max_bytes:  # (it grew while being read)
        raise error(f"{path}: {what} is larger than the limit of {_size(max_bytes)}")
    return data


class _Refused(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Refused(f"duplicate key {k[:40]!r} in one object")
            seen.add(k)
    return obj


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Refused(f"number {text[:20]}... is out of range" if len(text) > 20
                       else f"number {text} is out of range")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise _Refused(f"a number of {len(text.lstrip('-'))} digits (at most "
                       f"{MAX_JSON_DIGITS})")
    return int(text)


def _constant(text: str):
    raise _Refused(f"{text} is not a JSON number")


_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % (MAX_JSON_DIGITS + 1))


def json_depth_exceeds(obj, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        kinds = set(map(type, children))
        if list in kinds or dict in kinds:
            stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False


def parse_json(data: bytes, source: str, error: type[Exception] = ValueError,
               max_depth: int = MAX_JSON_DEPTH):
    """Decode UTF-8 JSON bytes, refusing with `error` (naming `source`): bad UTF-8, bad JSON,
    duplicate keys, NaN/Infinity and numbers out of float range, integers of more than
    `MAX_JSON_DIGITS` digits, and containers nested past `max_depth`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    hooks = dict(object_pairs_hook=_no_duplicates, parse_float=_finite, parse_constant=_constant)
    if _LONG_NUMBER.search(data):  # (rare: checking every integer costs a call each)
        hooks["parse_int"] = _bounded_int
    try:
        obj = json.loads(text, **hooks)
    except _Refused as exc:
        raise error(f"{source}: not accepted as JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column "
                    f"{exc.colno}") from None
    except RecursionError:
        raise error(f"{source}: not accepted as JSON: nested more than {max_depth} deep") \
            from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise error(f"{source}: not valid JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(obj, (list, dict)) and json_depth_exceeds(obj, max_depth):
        raise error(f"{source}: not accepted as JSON: nested more than {max_depth} deep")
    return obj


def load_json(path: str | Path, what: str, max_bytes: int = MAX_SMALL_JSON,
              error: type[Exception] = ValueError, max_depth: int = MAX_JSON_DEPTH):
    """A JSON file through the bounded reader and decoder (`read_regular`, `parse_json`)."""
    return parse_json(read_regular(path, what, max_bytes, error), str(path), error, max_depth)


# --- Writing ---------------------------------------------------------------------------------

def make_readable(path) -> None:
    """Give a temporary file the permissions a plainly created one would have (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


Content = str | bytes | Callable[[IO[bytes]], None]


def _temp_for(dest: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{dest.name[:100]}.", suffix=".tmp", dir=dest.parent)


def _fill(fd: int, content: Content) -> None:
    with os.fdopen(fd, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | Path, content: Content) -> Path:
    """Write one file all or nothing: `content` (text, bytes, or a function that writes to a
    binary file object) into a temporary file beside `path`, fsynced, then renamed over it.
    On any failure the temporary file is removed and `path` keeps what it held."""
    return write_files_atomically(Path(path).parent, {Path(path).name: content})[0]


def write_files_atomically(out_dir: str | Path, files: dict[str, Content]) -> list[Path]:
    """Write every file to a temporary name in `out_dir` first, then rename them all into
    place; every temporary file is removed whatever fails (a full disk included)."""
    out_dir = Path(out_dir)
    for name in files:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r}: not a plain file name")
        if (out_dir / name).is_dir() and not (out_dir / name).is_symlink():
            raise ValueError(f"{out_dir / name}: is a folder; give the path of a file")
    tmp: list[tuple[str, Path]] = []
    try:
        for name, content in files.items():
            dest = out_dir / name
            fd, path = _temp_for(dest)
            tmp.append((path, dest))  # (recorded before anything can fail)
            _fill(fd, content)
            make_readable(path)
        for path, dest in tmp:
            os.replace(path, dest)
        _fsync_dir(out_dir)
    finally:
        for path, _ in tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return [dest for _, dest in tmp]


# --- Output folders --------------------------------------------------------------------------

OWNER_STAMP = ".epim-owner.json"
OWNER_FORMAT = "epim-owner-v1"


class NotOwned(ValueError):
    """An output folder holds files that EPIM did not write."""


def read_owner(folder: Path) -> dict | None:
    """The stamp of an EPIM output folder, or None where there is none (or it is not ours)."""
    p = Path(folder) / OWNER_STAMP
    try:
        if not p.is_file() or p.stat().st_size > MAX_SMALL_JSON:
            return None
        obj = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != OWNER_FORMAT \
            or not isinstance(obj.get("files"), list):
        return None
    return obj


@contextlib.contextmanager
def _stamp_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_owner(folder: Path, command: str, files: Iterable[str]) -> None:
    stamp = {"format": OWNER_FORMAT, "command": command, "files": sorted(set(files))}
    write_files_atomically(folder, {OWNER_STAMP: json.dumps(stamp, indent=1) + "\n"})


def stamp_new_folder(folder: Path, command: str, files: Iterable[str] = ()) -> None:
    """Write the stamp into a folder that this command has just made (a staging folder)."""
    _write_owner(Path(folder), command, files)


def check_folder(folder: str | Path) -> Path:
    """Refuse (`NotOwned`, one line naming it) a `folder` that `claim_folder` would refuse,
    without creating anything: call it before the work, `claim_folder` before the writes."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotOwned(f"{folder}: exists and is not a folder; give a new or empty folder")
    if folder.is_dir() and read_owner(folder) is None:
        entries = sorted(p.name for p in folder.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise NotOwned(f"{folder}: holds files that EPIM did not write ({shown}; no "
                           f"{OWNER_STAMP}); give a new or empty folder, so that none of them "
                           "is overwritten or deleted")
    return folder


def claim_folder(folder: str | Path, command: str) -> Path:
    """Make `folder` this command's output folder: created (with its parents) when missing,
    stamped when empty, accepted when it carries EPIM's stamp; refused (`NotOwned`, one line
    naming it) when it is not a folder or holds files without the stamp."""
    folder = check_folder(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _stamp_lock(folder):
            if read_owner(folder) is None:
                check_folder(folder)  # (again, under the lock)
                _write_owner(folder, command, [])
    except BaseException:
        if created:
            _remove_if_bare(folder)
        raise
    return folder


def _remove_if_bare(folder: Path) -> None:
    """Remove a folder this command made, when it holds nothing but (maybe) the stamp."""
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {OWNER_STAMP}:
            (folder / OWNER_STAMP).unlink(missing_ok=True)
            folder.rmdir()


def listed(folder: str | Path) -> set[str]:
    stamp = read_owner(Path(folder))
    return set(stamp["files"]) if stamp else set()


def unlisted(folder: str | Path) -> list[str]:
    """Entries of an owned folder that its stamp does not list (a user's files)."""
    folder = Path(folder)
    mine = listed(folder) | {OWNER_STAMP}
    return sorted(p.name for p in folder.iterdir() if p.name not in mine)


def record(folder: str | Path, names: Iterable[str]) -> None:
    """Add `names` to the stamp of an owned folder (under a lock: workers share folders)."""
    folder = Path(folder)
    names = list(names)
    with _stamp_lock(folder):
        stamp = read_owner(folder)
        if stamp is None:
            raise NotOwned(f"{folder}: no {OWNER_STAMP}: not an EPIM output folder")
        if not set(names) <= set(stamp["files"]):
            _write_owner(folder, stamp.get("command", "?"), stamp["files"] + names)


def may_replace(folder: str | Path, name: str) -> bool:
    """Whether `name` in the owned `folder` is free to write: new, or listed as EPIM's."""
    p = Path(folder) / name
    return not (p.exists() or p.is_symlink()) or name in listed(folder)


def write_owned(folder: str | Path, files: dict[str, Content], command: str = "epim"
                ) -> list[Path]:
    """Write files into an output folder, claimed first (`claim_folder`), all or nothing: a
    name that exists and is not listed in the stamp is refused before anything is written;
    the names are listed before they are renamed into place."""
    created = not Path(folder).exists()
    folder = claim_folder(folder, command)
    try:
        taken = [n for n in files if not may_replace(folder, n)]
        if taken:
            raise NotOwned(f"{folder / taken[0]}: exists and was not written by EPIM; move it, "
                           "or give another output folder")
        record(folder, files)
        return write_files_atomically(folder, files)
    except BaseException:
        if created:  # (a folder this call made is not left behind, empty, on a failure)
            _remove_if_bare(folder)
        raise
