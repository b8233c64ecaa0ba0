"""Dataset sources: finding the inputs, fingerprinting them, and reading them in chunks.

A source is found in two steps:

- ``locate(cfg)`` finds the input files without reading them (cheap; also what the preflight
  checks call) and raises a one-line ``DataError`` for a missing path, missing files, an empty
  folder, a folder without images, a truncated IDX file or a malformed array file. Its
  ``fingerprint()`` hashes the inputs' names, sizes and modification times, so a changed source
  gives a new store.
- ``open_source(cfg, located)`` reads what preparation needs up front (labels, class names) and
  returns a ``Source`` whose ``tasks()`` yield chunks of work in source order: lists of image
  paths, or uint8 arrays (n, H, W, C), which ``ganlib.data.imaging`` turns into store rows.

Sources: ``digits`` (generated), ``mnist``/``fashion-mnist``/``kmnist`` (IDX pairs, torchvision's
layout or flat), ``idx`` (one IDX images file, optional labels beside it), ``npz`` (.npz or .npy
uint8 arrays, optional labels), ``cifar10`` (the python batches), ``celeba`` (img_align_celeba)
and ``folder`` (any directory of images; sub-folders are classes, as in torchvision's
ImageFolder, or flat without labels; a single class sub-folder is read as unlabelled images, since
one class gives nothing to learn or score by; what a folder gave and what it did not is in the
manifest's ``source`` and in one log line). torchvision's classes are used to download their datasets
(``download_dataset``); reading is done here, so a partial copy (the MNIST test pair alone, one
CIFAR batch) works too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ganlib.config import CPU_MAX_SIZE, KNOWN_SIDES, DataConfig, RunConfig, size_for, trains_on_gpu
from ganlib.data import digits, idx
from ganlib.data.imaging import IMAGE_EXTENSIONS, is_image_file
from ganlib.errors import DataError

DIGITS_VERSION = 1  # bump when the digit generator's output changes, to invalidate old stores

# dataset -> torchvision class (also its folder under data_root) and what the user must provide.
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST",
                       "cifar10": "CIFAR10", "celeba": "CelebA"}
KNOWN_CLASS_NAMES: dict[str, list[str]] = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
NPZ_IMAGE_KEYS = ("images", "x", "x_train", "data", "arr_0")
NPZ_LABEL_KEYS = ("labels", "y", "y_train", "targets", "arr_1")
_EXTENSIONS_TEXT = ", ".join(IMAGE_EXTENSIONS)


# --- locating -------------------------------------------------------------------------------


class Inputs:
    """The identity of a source's input files, taken one file at a time in a fixed order.

    Keeps only a running sha256 of (name, size, modification time), a count and a byte total, so
    fingerprinting a million files costs no memory. No content is read.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.bytes = 0

    def add(self, path: Path | str, name: str | None = None) -> None:
        try:
            st = os.stat(path)
        except OSError as err:  # listed, but its folder cannot be entered (no x permission), or gone since
            raise DataError(f"data.data_root: cannot read {path}: {err.strerror or err}; make the images and their "
                            "folders readable (e.g. chmod -R a+rX DIR) or remove the file") from None
        # surrogateescape: a file name that is not valid UTF-8 still has an identity (decoding skips it)
        line = f"{name or Path(path).name}\0{st.st_size}\0{st.st_mtime_ns}\n"
        self._hash.update(line.encode(errors="surrogateescape"))
        self.count += 1
        self.bytes += st.st_size

    def digest(self) -> str:
        return self._hash.hexdigest()


def _inputs(*paths: Path | None) -> Inputs:
    inputs = Inputs()
    for path in paths:
        if path is not None:
            inputs.add(path)
    return inputs


@dataclass
class Located:
    """The inputs of a source, found but not read. ``extra`` holds what each dataset needs next."""

    dataset: str
    root: Path | None
    inputs: Inputs = field(default_factory=Inputs)
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of the inputs' names, sizes and modification times (cheap: no content is read)."""
        if self.dataset == "digits":
            return f"digits-generator-v{DIGITS_VERSION}"
        return self.inputs.digest()

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.root) if self.root else None, "files": self.inputs.count,
                "bytes": self.inputs.bytes, "fingerprint": self.fingerprint()}


def _hint(dataset: str) -> str:
    return {
        "mnist": "the directory holding the MNIST IDX files",
        "fashion-mnist": "the directory holding the Fashion-MNIST IDX files",
        "kmnist": "the directory holding the KMNIST IDX files",
        "cifar10": f"the directory holding {CIFAR_DIR}/",
        "celeba": "the directory holding celeba/img_align_celeba/",
        "folder": "a directory of images (flat, or one sub-folder per class)",
        "npz": "a .npz (or .npy) file of uint8 images",
        "idx": "an IDX images file (...-images-idx3-ubyte[.gz])",
    }[dataset]


def _need_dir(root: Path, dataset: str) -> Path:
    if not root.exists():
        raise DataError(f"data.data_root: {root} is not a directory (it does not exist); "
                        f"point --data-root at {_hint(dataset)}")
    if not root.is_dir():
        raise DataError(f"data.data_root: {root} is a file, not a directory; point --data-root at "
                        f"{_hint(dataset)}")
    return root


def _need_file(path: Path, dataset: str) -> Path:
    if not path.exists():
        raise DataError(f"data.data_root: {path} does not exist; point --data-root at {_hint(dataset)}")
    if not path.is_file():
        raise DataError(f"data.data_root: {path} is a directory; point --data-root at "
                        f"{_hint(dataset)} itself")
    return path


def expected_files(cfg: DataConfig, root: Path) -> str:
    """What a torchvision dataset's files are called and where they go, for messages."""
    name = TORCHVISION_CLASSES[cfg.dataset]
    if cfg.dataset == "cifar10":
        wanted = {"train": "data_batch_1 ... data_batch_5", "test": "test_batch"}.get(
            cfg.split, "data_batch_1 ... data_batch_5 (or test_batch)")
        return f"expected {_cifar_dir(root)}/{wanted} (the extracted cifar-10-python.tar.gz)"
    if cfg.dataset == "celeba":
        return (f"expected {root}/celeba/img_align_celeba/000001.jpg ... (img_align_celeba.zip extracted; "
                "list_eval_partition.txt beside it for a split)")
    prefix = "t10k" if cfg.split == "test" else "train"
    alt = " (or t10k-* for the test split)" if cfg.split == "auto" else ""
    return (f"expected {prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz{alt}, .gz or "
            f"uncompressed, in {root} or {root}/{name}/raw")


def _not_found(cfg: DataConfig, root: Path) -> DataError:
    extra = " (CelebA downloads need the gdown package)" if cfg.dataset == "celeba" else ""
    return DataError(f"data.data_root: {TORCHVISION_CLASSES[cfg.dataset]} files not found in {root}: "
                     f"{expected_files(cfg, root)}; put them there, or add --download to fetch them{extra}")


def _locate_idx_pair(cfg: DataConfig, root: Path) -> Located:
    folder = TORCHVISION_CLASSES[cfg.dataset]
    _need_dir(root, cfg.dataset)
    splits = ["train", "test"] if cfg.split == "auto" else [cfg.split]
    for split in splits:
        try:
            images_path, labels_path = idx.find_mnist_files(root, split, folder)
        except DataError:
            continue
        header = idx.read_idx_header(images_path, (3,))
        return Located(cfg.dataset, root, _inputs(images_path, labels_path),
                       {"split": split, "images": images_path, "labels": labels_path, "header": header})
    raise _not_found(cfg, root)


def _labels_beside(images_path: Path) -> Path | None:
    """``...-labels-idx1-ubyte[.gz]`` next to ``...-images-idx3-ubyte[.gz]``, if it exists."""
    name = images_path.name
    for tag in ("images-idx3", "images-idx4"):
        if tag in name:
            base = name.replace(tag, "labels-idx1")
            for candidate in (base, base.removesuffix(".gz"), base + ".gz"):
                if (images_path.parent / candidate).is_file():
                    return images_path.parent / candidate
    return None


def _locate_idx_file(cfg: DataConfig, root: Path) -> Located:
    if root.is_dir():
        found = sorted(p for p in root.iterdir() if p.is_file() and "-images-idx" in p.name)
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise DataError(f"data.data_root: {root} is a directory with {len(found)} IDX images files "
                            f"({names}); point --data-root at one ...-images-idx3-ubyte[.gz] file")
        root = found[0]
    images_path = _need_file(root, "idx")
    header = idx.read_idx_header(images_path, (3, 4))
    labels_path = _labels_beside(images_path)
    extra = {"images": images_path, "labels": labels_path, "header": header}
    return Located("idx", images_path, _inputs(images_path, labels_path), extra)


def _npy_stream_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError as err:
        raise DataError(f"data.data_root: {where} is not a valid .npy array ({err}); re-save it "
                        "with np.savez") from None
    if fortran:
        raise DataError(f"data.data_root: {where} is stored in Fortran order; save "
                        "np.ascontiguousarray(images)")
    return tuple(shape), dtype


def _check_image_array(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype != np.uint8:
        raise DataError(f"data.data_root: images in {where} are {dtype}, expected uint8 0-255; "
                        "convert with (x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 2, 3, 4)):
        raise DataError(f"data.data_root: images in {where} have shape {shape}, expected (N, H, W) or "
                        "(N, H, W, C) with C = 1, 3 or 4 (channels last)")
    if shape[0] == 0:
        raise DataError(f"data.data_root: {where} holds no images (shape {shape})")


def _locate_npz(cfg: DataConfig, root: Path) -> Located:
    path = _need_file(root, "npz")
    extra: dict[str, Any] = {"path": path}
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            shape, dtype = _npy_stream_header(f, str(path))
        extra.update(images_key=None, labels_key=None, shape=shape)
    else:
        try:
            with zipfile.ZipFile(path) as z:
                keys = [n.removesuffix(".npy") for n in z.namelist() if n.endswith(".npy")]
                only = keys[0] if len(keys) == 1 else None
                image_key = next((k for k in NPZ_IMAGE_KEYS if k in keys), only)
                if image_key is None:
                    raise DataError(f"data.data_root: {path} has arrays {keys} but none named "
                                    f"{', '.join(NPZ_IMAGE_KEYS)}; save the images as "
                                    "np.savez(path, images=..., labels=...)")
                with z.open(f"{image_key}.npy") as f:
                    shape, dtype = _npy_stream_header(f, f"{path}[{image_key}]")
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"data.data_root: {path} is not a readable .npz file ({err}); "
                            "save it with np.savez(path, images=..., labels=...)") from None
        label_key = next((k for k in NPZ_LABEL_KEYS if k in keys and k != image_key), None)
        extra.update(images_key=image_key, labels_key=label_key, shape=shape)
    _check_image_array(shape, dtype, str(path))
    return Located("npz", path, _inputs(path), extra)


def _cifar_dir(root: Path) -> Path:
    return root if root.name == CIFAR_DIR else root / CIFAR_DIR


def _locate_cifar(cfg: DataConfig, root: Path) -> Located:
    _need_dir(root, "cifar10")
    base = _cifar_dir(root)
    train = [base / n for n in CIFAR_TRAIN if (base / n).is_file()]
    test = [base / n for n in CIFAR_TEST if (base / n).is_file()]
    if cfg.split == "train" or (cfg.split == "auto" and train):
        batches, split = train, "train"
    else:
        batches, split = test, "test"
    if not batches:
        raise _not_found(cfg, root)
    meta = base / "batches.meta"
    meta_file = meta if meta.is_file() else None
    return Located("cifar10", root, _inputs(*batches, meta_file), {"split": split, "batches": batches,
                                                                  "meta": meta_file})


def _list_dir(directory: Path) -> tuple[list[str], list[str]]:
    """(files, sub-directories) of ``directory``, names only, sorted, hidden ones left out.

    Names only: holding 50,000 ``DirEntry`` objects would cost a kilobyte per file.
    """
    files, dirs = [], []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    dirs.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
    except OSError as err:
        raise DataError(f"data.data_root: cannot list {directory}: {err}") from None
    return sorted(files), sorted(dirs)


def _walk_files(directory: Path, rel: str, seen: set[str] | None = None) -> Iterator[str]:
    """Relative paths (``rel`` + name) of the non-hidden files under ``directory``, recursively, sorted.

    Symlinked directories are followed (as torchvision's ImageFolder does), each real directory once,
    so a link cycle cannot recurse forever.
    """
    seen = set() if seen is None else seen
    real = os.path.realpath(directory)
    if real in seen:
        return
    seen.add(real)
    files, dirs = _list_dir(directory)
    yield from (rel + name for name in files)
    for name in dirs:
        yield from _walk_files(directory / name, f"{rel}{name}/", seen)


def _locate_celeba(cfg: DataConfig, root: Path) -> Located:
    _need_dir(root, "celeba")
    candidates = [root / "celeba" / "img_align_celeba", root / "img_align_celeba"]
    images_dir = next((p for p in candidates if p.is_dir()), None)
    if images_dir is None:
        raise _not_found(cfg, root)
    partition = images_dir.parent / "list_eval_partition.txt"
    names = [name for name in _list_dir(images_dir)[0] if is_image_file(name)]
    if cfg.split != "auto":
        if not partition.is_file():
            raise DataError(f"data.split: {cfg.split!r} needs {partition} (CelebA's "
                            "list_eval_partition.txt); put it there, or use --split auto for all images")
        wanted = {"train": "0", "test": "2"}[cfg.split]
        chosen = {parts[0] for parts in (line.split() for line in partition.read_text().splitlines())
                  if len(parts) == 2 and parts[1] == wanted}
        names = [n for n in names if n in chosen]
    if not names:
        raise DataError(f"data.data_root: {images_dir} has no images for split {cfg.split!r}; "
                        "extract img_align_celeba.zip there")
    inputs = Inputs()
    base = os.path.join(images_dir, "")
    for name in names:
        inputs.add(base + name, name)
    if cfg.split != "auto":
        inputs.add(partition)
    return Located("celeba", root, inputs, {"images_dir": images_dir, "names": names, "split": cfg.split})


def printable(name: str) -> str:
    """A file or folder name as text that encodes (bytes that are not UTF-8 shown as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _class_dirs(root: Path, names: list[str]) -> tuple[list[str], dict[str, str], list[dict[str, str]]]:
    """(class folders taken, {symlinked one: its target}, [{"path", "reason"} of those not taken]).

    Real sub-folders are classes. A symlinked one is followed (as torchvision's ImageFolder does) and
    named in the manifest, unless it leads to data_root itself, a folder above it, or a class already
    taken (its images would count twice, under two labels).
    """
    real_root = os.path.realpath(root)
    taken: dict[str, str] = {}  # real path -> class name
    links: dict[str, str] = {}
    not_taken: list[dict[str, str]] = []
    for name in sorted(names, key=lambda n: (root / n).is_symlink()):  # real folders first
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # os.fsdecode's surrogates: as a class name it would break the manifest
            not_taken.append({"path": printable(name), "reason": "a folder whose name is not valid UTF-8; rename "
                              "it to use its images"})
            continue
        real = os.path.realpath(root / name)
        if real == real_root or real_root.startswith(real + os.sep):
            not_taken.append({"path": name, "reason": f"a symlink to {real}, which holds data_root itself; "
                              "not followed"})
            continue
        owner = next((c for r, c in taken.items() if real == r or real.startswith(r + os.sep)), None)
        if owner is not None:
            not_taken.append({"path": name, "reason": f"a symlink into class folder {owner!r} (taken already: "
                              "its images would count twice); not followed"})
            continue
        taken[real] = name
        if (root / name).is_symlink():
            links[name] = real
    return sorted(taken.values()), links, not_taken


def _broken_links(root: Path) -> list[dict[str, str]]:
    """Symlinks in ``root`` whose target does not exist (neither files nor folders, so else unmentioned)."""
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        broken = sorted(e.name for e in entries
                        if not e.name.startswith(".") and e.is_symlink() and not os.path.exists(e.path))
        return [{"path": name, "reason": "a symlink whose target does not exist"} for name in broken]
    return []


def _locate_folder(cfg: DataConfig, root: Path) -> Located:
    _need_dir(root, "folder")
    top_files, sub_dirs = _list_dir(root)
    if not top_files and not sub_dirs:
        raise DataError(f"data.data_root: {root} is empty; put images there ({_EXTENSIONS_TEXT}), "
                        "flat or one sub-folder per class")
    class_dirs, links, not_taken = _class_dirs(root, sub_dirs)
    not_taken += _broken_links(root)
    by_class: dict[str, list[str]] = {}
    others = [name for name in top_files if not is_image_file(name)]
    stray: list[str] = []
    if class_dirs:  # torchvision's ImageFolder: every sub-folder is a class, searched recursively
        for name in class_dirs:
            by_class[name] = []
            for rel in _walk_files(root / name, name + "/"):
                (by_class[name] if is_image_file(rel) else others).append(rel)
        stray = [name for name in top_files if is_image_file(name)]
        if stray and not any(by_class.values()):  # images beside sub-folders without any (__MACOSX/, notes/):
            not_taken += [{"path": name, "reason": "a sub-folder without images, beside images at the top level: "
                           "the folder is read as flat"} for name in class_dirs]
            class_dirs, by_class, stray, links = [], {"": stray}, [], {}
    else:
        by_class[""] = [name for name in top_files if is_image_file(name)]
    inputs = Inputs()
    base = os.path.join(root, "")  # plain strings: a Path per file costs more than its stat (200,000 files: 10 s → 2)
    for rel in (rel for names in by_class.values() for rel in names):
        inputs.add(base + rel, rel)
    if inputs.count == 0:
        example = f", e.g. {others[0]}" if others else ""
        raise DataError(f"data.data_root: {root} has no image files ({_EXTENSIONS_TEXT}); found "
                        f"{len(others)} other files{example}")
    with_images = [c for c, files in by_class.items() if files]
    if not class_dirs:
        layout = "flat"
    elif len(with_images) == 1 and not cfg.classes:
        layout = "one class sub-folder"  # read as unlabelled: one class gives nothing to learn or score by
    else:
        layout = "class sub-folders"
    return Located("folder", root, inputs, {"by_class": by_class, "stray": stray, "others": others,
                                            "layout": layout, "links": links, "not_taken": not_taken})


def locate(cfg: DataConfig) -> Located:
    """Find the inputs of ``cfg``'s source without reading them; a one-line ``DataError`` if absent."""
    if cfg.dataset == "digits":
        return Located("digits", None)
    root = Path(cfg.data_root).expanduser().resolve()  # type: ignore[arg-type]
    if cfg.dataset in ("mnist", "fashion-mnist", "kmnist"):
        return _locate_idx_pair(cfg, root)
    return {"idx": _locate_idx_file, "npz": _locate_npz, "cifar10": _locate_cifar, "celeba": _locate_celeba,
            "folder": _locate_folder}[cfg.dataset](cfg, root)


# --- reading --------------------------------------------------------------------------------

Task = tuple[str, Any]  # ("files", [path, ...]) or ("arrays", uint8 (n, H, W, C))


@dataclass
class Source:
    """A located source, opened: what preparation iterates over.

    ``count`` candidate images (after the class filter) come out of ``tasks(rows)`` in order, as
    (index of the first candidate, task) with at most ``rows`` candidates per task. ``labels`` is
    int64 (count,) or None; ``class_names`` names label k; ``name(i)`` says what candidate i is in
    messages. ``skipped``/``warnings``: problems found while listing; ``summary``: one line saying what
    was taken and what was not (folders).
    """

    kind: str
    count: int
    labels: np.ndarray | None
    class_names: list[str] | None
    info: dict[str, Any]
    tasks: Callable[[int], Iterator[tuple[int, Task]]]
    name: Callable[[int], str]
    native_channels: int = 3
    native_size: tuple[int, int] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""  # one line: what the source gave and what it did not (folders)


def resolve_classes(wanted: list[str] | None, names: list[str] | None, dataset: str) -> list[int] | None:
    """Indices (sorted) of the classes named in ``wanted`` (names, or indices as strings)."""
    if wanted is None:
        return None
    if names is None:
        raise DataError(f"data.classes: {dataset} here has no labels (no class sub-folders or label array), "
                        "so there is nothing to filter; drop --classes")
    chosen = set()
    for item in wanted:
        if item in names:
            chosen.add(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            chosen.add(int(item))
        else:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise DataError(f"data.classes: unknown class {item!r} for {dataset}; valid: {shown} "
                            f"(or indices 0-{len(names) - 1})")
    return sorted(chosen)


def _filter(labels: np.ndarray, keep: list[int] | None) -> tuple[np.ndarray | None, np.ndarray]:
    """(mask over all rows or None, labels of the kept rows relabelled 0..K-1)."""
    if keep is None:
        return None, labels
    mask = np.isin(labels, keep)
    remap = np.full(int(max(labels.max(initial=0), max(keep))) + 1, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return mask, remap[labels[mask]]


def _array_tasks(chunks: Callable[[int], Iterator[np.ndarray]], mask: np.ndarray | None
                 ) -> Callable[[int], Iterator[tuple[int, Task]]]:
    """Turn a reader of (n, H, W, C) chunks into tasks of the rows that ``mask`` keeps."""
    def tasks(rows: int) -> Iterator[tuple[int, Task]]:
        row, out = 0, 0
        for chunk in chunks(rows):
            selected = chunk if mask is None else chunk[mask[row: row + len(chunk)]]
            row += len(chunk)
            if len(selected):
                yield out, ("arrays", selected)
                out += len(selected)
    return tasks


def _labelled(labels: np.ndarray, names: list[str], cfg: DataConfig, where: str
              ) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    labels = labels.astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"data.data_root: labels in {where} range {labels.min()}..{labels.max()}, expected "
                        f"0..{len(names) - 1}; is it the right file?")
    keep = resolve_classes(cfg.classes, names, cfg.dataset)
    mask, kept = _filter(labels, keep)
    return mask, kept, names if keep is None else [names[k] for k in keep]


def _open_digits(cfg: DataConfig, located: Located) -> Source:
    images, labels = digits.generate_digits(cfg.num_images, seed=cfg.seed, image_size=cfg.image_size)
    mask, labels, names = _labelled(labels, KNOWN_CLASS_NAMES["digits"], cfg, "digits")
    hwc = images.transpose(0, 2, 3, 1)  # (N, 1, S, S) -> (N, S, S, 1), a view

    def chunks(rows: int) -> Iterator[np.ndarray]:
        for start in range(0, len(hwc), rows):
            yield hwc[start: start + rows]
    return Source("arrays", len(labels), labels, names,
                  {"kind": "digits", "seed": cfg.seed, "num_images": cfg.num_images,
                   "generator_version": DIGITS_VERSION},
                  _array_tasks(chunks, mask), lambda i: f"digit {i}", 1, (cfg.image_size, cfg.image_size))


def _idx_chunks(header: idx.IdxHeader) -> Callable[[int], Iterator[np.ndarray]]:
    def chunks(rows: int) -> Iterator[np.ndarray]:
        for chunk in idx.iter_idx(header, rows):
            yield chunk[..., None] if chunk.ndim == 3 else chunk
    return chunks


def _open_idx(cfg: DataConfig, located: Located) -> Source:
    header: idx.IdxHeader = located.extra["header"]
    labels_path = located.extra["labels"]
    info = {"kind": "idx", **located.summary(), "images_file": str(located.extra["images"]),
            "labels_file": str(labels_path) if labels_path else None}
    if cfg.dataset != "idx":
        info.update(kind=f"{cfg.dataset}-idx", split=located.extra["split"])
    channels = header.dims[3] if len(header.dims) == 4 else 1
    if channels not in (1, 2, 3, 4):
        raise DataError(f"data.data_root: {header.path} has {channels} channels per pixel; expected "
                        "1, 3 or 4")
    labels = names = mask = None
    if labels_path is not None:
        labels = idx.read_labels(labels_path)
        if labels.ndim != 1 or len(labels) != header.rows:
            raise DataError(f"data.data_root: {labels_path} has {labels.size} labels for "
                            f"{header.rows} images in {header.path}; they do not pair up")
        names = KNOWN_CLASS_NAMES.get(cfg.dataset) or [str(i) for i in range(int(labels.max(initial=0)) + 1)]
        mask, labels, names = _labelled(labels, names, cfg, str(labels_path))
    else:
        resolve_classes(cfg.classes, None, cfg.dataset)
    count = header.rows if labels is None else len(labels)
    return Source("arrays", count, labels, names, info, _array_tasks(_idx_chunks(header), mask),
                  lambda i: f"{header.path.name} image {i}", channels, header.dims[1:3])


def _npz_chunks(path: Path, key: str | None, shape: tuple[int, ...]) -> Callable[[int], Iterator[np.ndarray]]:
    row_bytes = int(np.prod(shape[1:], dtype=np.int64))

    def chunks(rows: int) -> Iterator[np.ndarray]:
        with contextlib.ExitStack() as stack:
            if key is None:
                stream = stack.enter_context(open(path, "rb"))
            else:
                stream = stack.enter_context(stack.enter_context(zipfile.ZipFile(path)).open(f"{key}.npy"))
            _npy_stream_header(stream, str(path))
            for start in range(0, shape[0], rows):
                n = min(rows, shape[0] - start)
                data = stream.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise DataError(f"data.data_root: {path} is truncated at image {start}; re-save it")
                chunk = np.frombuffer(data, dtype=np.uint8).reshape(n, *shape[1:])
                yield chunk[..., None] if chunk.ndim == 3 else chunk
    return chunks


def _open_npz(cfg: DataConfig, located: Located) -> Source:
    path, shape = located.extra["path"], located.extra["shape"]
    labels_key = located.extra["labels_key"]
    labels = names = mask = None
    if labels_key is not None:
        with np.load(path) as npz:
            raw = npz[labels_key]
        if raw.ndim != 1 or len(raw) != shape[0] or not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"data.data_root: {path}[{labels_key}] must be integer labels of shape "
                            f"({shape[0]},), got {raw.dtype} {raw.shape}")
        names = [str(i) for i in range(int(raw.max(initial=0)) + 1)]
        mask, labels, names = _labelled(raw, names, cfg, f"{path}[{labels_key}]")
    else:
        resolve_classes(cfg.classes, None, cfg.dataset)
    info = {"kind": "npz" if path.suffix != ".npy" else "npy", **located.summary(),
            "images_key": located.extra["images_key"], "labels_key": labels_key}
    channels = shape[3] if len(shape) == 4 else 1
    count = shape[0] if labels is None else len(labels)
    return Source("arrays", count, labels, names, info,
                  _array_tasks(_npz_chunks(path, located.extra["images_key"], shape), mask),
                  lambda i: f"{path.name} image {i}", channels, shape[1:3])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses anything else: a pickle can otherwise run any code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 32, 32, 3), labels int64 (n,)) of one python-format CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError,
            ValueError) as err:
        raise DataError(f"data.data_root: {path} is not a readable CIFAR-10 batch "
                        f"({type(err).__name__}: {err}); replace it with the file from "
                        "cifar-10-python.tar.gz") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"data.data_root: {path} holds data {data.shape} and labels {labels.shape}; "
                        "a CIFAR-10 batch has (n, 3072) and (n,)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_names(located: Located) -> list[str]:
    """Class names from batches.meta, or the standard ones when it is absent."""
    if located.extra["meta"] is None:
        return KNOWN_CLASS_NAMES["cifar10"]
    try:
        with open(located.extra["meta"], "rb") as f:
            meta = _CifarUnpickler(f, encoding="latin1").load()
        return [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as err:
        raise DataError(f"data.data_root: {located.extra['meta']} is unreadable ({err}); "
                        "replace it or delete it (the standard class names are used then)") from None


def _open_cifar(cfg: DataConfig, located: Located) -> Source:
    batches: list[Path] = located.extra["batches"]
    names = _cifar_names(located)
    # Labels first (each batch is read again, one at a time, when its images are needed).
    all_labels = np.concatenate([_read_cifar_batch(b)[1] for b in batches])
    where = str(_cifar_dir(located.root))  # type: ignore[arg-type]
    mask, labels, kept_names = _labelled(all_labels, names, cfg, where)
    warnings = []
    if located.extra["split"] == "train" and len(batches) < len(CIFAR_TRAIN):
        warnings.append(f"CIFAR-10: only {', '.join(b.name for b in batches)} of data_batch_1 ... "
                        "data_batch_5 found; preparing those")

    def chunks(rows: int) -> Iterator[np.ndarray]:
        for path in batches:
            images, _ = _read_cifar_batch(path)
            for start in range(0, len(images), rows):
                yield images[start: start + rows]
    info = {"kind": "cifar10-batches", **located.summary(), "split": located.extra["split"],
            "batches": [b.name for b in batches]}
    return Source("arrays", len(labels), labels, kept_names, info, _array_tasks(chunks, mask),
                  lambda i: f"CIFAR-10 image {i}", 3, (32, 32), warnings=warnings)


def _file_tasks(root: Path, names: list[str]) -> Callable[[int], Iterator[tuple[int, Task]]]:
    def tasks(rows: int) -> Iterator[tuple[int, Task]]:
        for start in range(0, len(names), rows):
            yield start, ("files", [str(root / n) for n in names[start: start + rows]])
    return tasks


def _open_celeba(cfg: DataConfig, located: Located) -> Source:
    resolve_classes(cfg.classes, None, "celeba")
    names, images_dir = located.extra["names"], located.extra["images_dir"]
    info = {"kind": "celeba", **located.summary(), "images_dir": str(images_dir), "split": cfg.split}
    return Source("files", len(names), None, None, info, _file_tasks(images_dir, names), names.__getitem__)


def _interleave(groups: list[list[str]]) -> tuple[list[str], list[int]]:
    """Round-robin over the classes (c0[0], c1[0], ..., c0[1], ...): the first N are balanced."""
    names, labels = [], []
    for i in range(max(len(g) for g in groups)):
        for label, group in enumerate(groups):
            if i < len(group):
                names.append(group[i])
                labels.append(label)
    return names, labels


def _folder_classes(cfg: DataConfig, located: Located) -> tuple[list[str], list[str]]:
    """(class names that have images, warnings); with ``strict`` an empty class folder is an error."""
    by_class: dict[str, list[str]] = located.extra["by_class"]
    empty = [c for c, files in by_class.items() if not files]
    if empty and cfg.strict:
        raise DataError(f"data.data_root: class folder {empty[0]!r} in {located.root} has no images; "
                        "put images in it or remove it (or drop --strict to ignore empty class folders)")
    warnings = [f"class folders without images, ignored: {', '.join(empty)}"] if empty else []
    return [c for c, files in by_class.items() if files], warnings


def _folder_summary(located: Located, classes: list[str], count: int, labelled: bool) -> str:
    """The one line saying what a folder gave and what it did not (also in the manifest)."""
    extra = located.extra
    by_class: dict[str, list[str]] = extra["by_class"]
    if extra["layout"] == "flat":
        taken = f"took {count} image files at its top level, unlabelled"
    elif not labelled:
        taken = (f"took {count} image files of its one class sub-folder {classes[0]!r} as unlabelled images (one "
                 "class gives no labels to learn or score by: evaluation reads the self-supervised ssl_* space)")
    else:
        shown = ", ".join(f"{c} ({len(by_class[c])})" for c in classes[:10]) + (" ..." if len(classes) > 10 else "")
        taken = f"took {count} image files in {len(classes)} classes, one per sub-folder: {shown}"
    if extra["links"]:
        taken += "; followed symlinked class folders " + ", ".join(f"{n} -> {t}" for n, t in extra["links"].items())
    not_taken = []
    if extra["stray"]:
        not_taken.append(f"{len(extra['stray'])} image files at the top level, outside the class sub-folders "
                         f"(e.g. {extra['stray'][0]}; listed under 'skipped')")
    empty = [c for c, files in by_class.items() if not files]
    if empty:
        not_taken.append(f"class folders without images: {', '.join(empty)}")
    not_taken += [f"{e['path']} ({e['reason']})" for e in extra["not_taken"]]
    if extra["others"]:
        not_taken.append(f"{len(extra['others'])} files that are not images (e.g. {extra['others'][0]})")
    return (f"folder {located.root}: {taken}; not taken: " + ("; ".join(not_taken) if not_taken else "nothing")
            + " (manifest.json: source)")


def _open_folder(cfg: DataConfig, located: Located) -> Source:
    by_class: dict[str, list[str]] = located.extra["by_class"]
    root: Path = located.root  # type: ignore[assignment]
    skipped = [{"file": name, "reason": "outside the class sub-folders (every sub-folder of data_root is a "
                "class; move it into one)"} for name in located.extra["stray"]]
    info = {"kind": "image-folder", **located.summary(), "layout": located.extra["layout"],
            "ignored_non_image_files": len(located.extra["others"]),
            "symlinked_class_folders": located.extra["links"], "not_taken": located.extra["not_taken"]}
    if located.extra["layout"] != "class sub-folders":  # flat, or one class sub-folder: unlabelled
        resolve_classes(cfg.classes, None, "folder")
        classes, warnings = _folder_classes(cfg, located) if located.extra["layout"] != "flat" else ([""], [])
        names = by_class[classes[0]]
        info["summary"] = _folder_summary(located, classes, len(names), labelled=False)
        return Source("files", len(names), None, None, info, _file_tasks(root, names), names.__getitem__,
                      skipped=skipped, warnings=warnings, summary=info["summary"])
    classes, warnings = _folder_classes(cfg, located)
    keep = resolve_classes(cfg.classes, classes, "folder")
    if keep is not None:
        classes = [classes[k] for k in keep]
    names, labels = _interleave([by_class[c] for c in classes])
    info["classes"] = classes
    info["summary"] = _folder_summary(located, classes, len(names), labelled=True)
    return Source("files", len(names), np.asarray(labels, dtype=np.int64), classes, info,
                  _file_tasks(root, names), names.__getitem__, skipped=skipped, warnings=warnings,
                  summary=info["summary"])


def open_source(cfg: DataConfig, located: Located) -> Source:
    """Open a located source for reading: labels, class names, and its chunked tasks."""
    if located.dataset == "digits":
        return _open_digits(cfg, located)
    if located.dataset in ("mnist", "fashion-mnist", "kmnist", "idx"):
        return _open_idx(cfg, located)
    return {"npz": _open_npz, "cifar10": _open_cifar, "celeba": _open_celeba,
            "folder": _open_folder}[located.dataset](cfg, located)


# --- the images' own size (data.image_size auto) -------------------------------------------

SIZE_SAMPLE = 64  # folder files whose headers are read to find the images' size


def _folder_side(located: Located) -> tuple[int | None, str]:
    """The median shorter side of up to ``SIZE_SAMPLE`` of a folder's files, evenly spaced (headers only)."""
    from PIL import Image  # only here: the size is read from the headers, no image is decoded

    names = [rel for group in located.extra["by_class"].values() for rel in group]
    picked = [names[i] for i in np.linspace(0, len(names) - 1, min(len(names), SIZE_SAMPLE)).round().astype(int)]
    sides = []
    with warnings.catch_warnings():  # a huge image's header is read, not decoded: Pillow's warning is no news
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for rel in picked:  # distinct: at most one pick per file
            try:
                with Image.open(located.root / rel) as im:  # type: ignore[operator]
                    sides.append(min(im.size))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # unreadable files are skipped (and listed) by preparation
    if not sides:
        return None, f"none of {len(picked)} sampled files could be opened"
    return int(np.median(sides)), f"the median shorter side of {len(sides)} of its {len(names)} images"


def native_side(cfg: DataConfig, located: Located | None = None) -> tuple[int | None, str]:
    """The shorter side of ``cfg``'s images in pixels, and where that comes from (None: not known).

    Known for the named datasets (``KNOWN_SIDES``); read from the headers of IDX and npy files, and of a
    sample of a folder's files (cheap: nothing is decoded). A one-line ``DataError`` if the source is missing.
    ``located``: the source, when the caller has already found it (not found again).
    """
    if cfg.dataset in KNOWN_SIDES:
        return KNOWN_SIDES[cfg.dataset]
    located = located or locate(cfg)
    if located.dataset == "idx":
        dims = located.extra["header"].dims
        return min(dims[1], dims[2]), f"its IDX header says {dims[1]}x{dims[2]} px"
    if located.dataset == "npz":
        shape = located.extra["shape"]
        return min(shape[1], shape[2]), f"its arrays are {shape[1]}x{shape[2]} px"
    return _folder_side(located)


def auto_image_size(cfg: DataConfig, on_gpu: Callable[[], bool] = lambda: True,
                    located: Located | None = None) -> tuple[int, str]:
    """``data.image_size auto``: (size, why), by ``ganlib.config.size_for`` (at most ``CPU_MAX_SIZE``
    unless ``on_gpu()``); ``CPU_MAX_SIZE`` when no sampled file of a folder could be opened."""
    side, why = native_side(cfg, located)
    if side is None:
        return CPU_MAX_SIZE, f"{why}; {CPU_MAX_SIZE} px by default"
    return size_for(side, why, on_gpu)


def sized_config(cfg: RunConfig, located: Located | None = None) -> RunConfig:
    """``cfg`` with ``data.image_size`` 'auto' decided before preparation: the run's own size where it exists
    (``RunConfig.with_image_size``), else the images' (``auto_image_size``, at most ``CPU_MAX_SIZE`` unless
    it trains on a GPU); left 'auto' while the source cannot be found (the preflight says why).
    ``located``: the source, when the caller has already found it."""
    cfg = cfg.with_image_size()
    if cfg.data.image_size != "auto":
        return cfg
    try:
        size, why = auto_image_size(cfg.data, lambda: trains_on_gpu(cfg.device), located)
    except DataError:
        return cfg
    return cfg.with_image_size(size, why)


# --- preflight and download -----------------------------------------------------------------


def find_source(cfg: DataConfig) -> Located | None:
    """``locate(cfg)`` where there are input files to find, once, for the checks and the size that follow;
    None for the embedded digits, a dataset still to be downloaded, or a source that cannot be found
    (``check_source`` then says why)."""
    if cfg.dataset == "digits" or (cfg.download and cfg.dataset in TORCHVISION_CLASSES):
        return None
    try:
        return locate(cfg)
    except DataError:
        return None


def check_source(cfg: DataConfig, located: Located | None = None) -> Located | None:
    """Fail fast, with one line, if the source of ``cfg`` is missing or malformed (reads no images).

    With ``download`` set, torchvision datasets may be absent: preparation fetches them. ``located``: the
    source, when the caller has already found it. Returns the located source (None for the digits and a
    dataset still to be downloaded).
    """
    if cfg.dataset == "digits":
        resolve_classes(cfg.classes, KNOWN_CLASS_NAMES["digits"], "digits")
        return None
    if cfg.download and cfg.dataset in TORCHVISION_CLASSES:
        root = Path(cfg.data_root)  # type: ignore[arg-type]
        if root.exists() and not root.is_dir():
            raise DataError(f"data.data_root: {root} is a file, not a directory; point --data-root at the "
                            f"directory to download {TORCHVISION_CLASSES[cfg.dataset]} into")
        return None
    located = located or locate(cfg)
    names = KNOWN_CLASS_NAMES.get(cfg.dataset)
    if cfg.dataset == "folder" and located.extra["layout"] == "class sub-folders":
        names, _ = _folder_classes(cfg, located)
    if cfg.classes is None:
        return located
    if cfg.dataset in ("npz", "idx"):
        open_source(cfg, located)  # reads the labels only (small), which name the classes
        return located
    if cfg.dataset == "cifar10":
        names = _cifar_names(located)
    resolve_classes(cfg.classes, names, cfg.dataset)
    return located


def _move_tree(src: Path, dest: Path) -> None:
    """Move src's contents into dest (merging directories, replacing files)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink():
            _move_tree(entry, target)
        else:
            os.replace(entry, target)


def download_dataset(cfg: DataConfig, log: Callable[[str], None] | None = None) -> None:
    """Download a torchvision dataset into ``data_root`` if its files are not there yet.

    torchvision downloads into a temporary directory inside data_root; only a complete download
    is moved into place, so a failure (no network, interrupted) leaves nothing half-written.
    """
    if cfg.dataset not in TORCHVISION_CLASSES:
        return
    try:
        locate(cfg)
        return  # already there
    except DataError:
        pass
    root = Path(cfg.data_root).expanduser().resolve()  # type: ignore[arg-type]
    name = TORCHVISION_CLASSES[cfg.dataset]
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".ganlib-download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"dataset: downloading {name} into {root} with torchvision")
    try:
        import torchvision.datasets as tv_datasets  # lazy: large, and only needed to download

        cls = getattr(tv_datasets, name)
        if cfg.dataset == "celeba":
            cls(str(tmp), split="all", target_type=[], download=True)
        else:
            cls(str(tmp), train=cfg.split != "test", download=True)
        _move_tree(tmp, root)
    except Exception as err:  # noqa: BLE001  network, archive and import errors all mean "did not download"
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(root, ignore_errors=True)  # only the empty directory made above
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise DataError(f"data.download: downloading {name} into {root} failed "
                        f"({type(err).__name__}: {reason}); without a network, put the files there "
                        f"yourself: {expected_files(cfg, root)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
