"""Image data sets as uint8 arrays [N, H, W, C], read from the data sets on offer or from files.

A spec names the data: `fashion-mnist` (the Debian package dataset-fashion-mnist), `digits` (scikit-learn's bundled
8×8 digits, the fallback every machine with the PyPI package has), `default` (the first of these two that is
installed), `colour-patches` (RGB patches of scikit-learn's sample photos, see below), or a path: an IDX file
(`*.idx3-ubyte`, optionally `.gz`, with its labels file beside it if there is one), a `.npy` array, a `.parquet`
file with a column of encoded PNG/JPEG images, a folder of PNG/JPEG files (read recursively, in path order) or one
such file.
Grayscale images keep one channel, colour ones have three (alpha is dropped). Every bad input raises ImageDataError
with one line naming the file and what to do.

`colour-patches`: 8×8 RGB patches of the two photographs scikit-learn bundles (`load_sample_images`: china.jpg and
flower.jpg, 427×640 each, nothing downloaded). Each photo is halved first (2×2 means, 213×320; a patch then spans
16×16 photo pixels), then cut into non-overlapping patches, 26 rows × 40 columns of them. The first 31 columns are
the train split and the last 8 the test split; the column between them is left out, so no test patch touches a train
patch: 2 × 26 × 31 = 1,612 train and 2 × 26 × 8 = 416 test patches, in photo, row, column order; labels say the
photo (0 china, 1 flower).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NAMED = ("fashion-mnist", "digits", "colour-patches", "default")
DIGITS_TEST_EVERY = 5  # digits: every 5th image (index 4, 9, ...) is the test split
DIGITS_SHAPE = (8, 8, 1)
PATCH_SHAPE = (8, 8, 3)  # colour-patches
PATCH_TEST_COLUMNS = 8  # colour-patches: the last 8 of each photo's 40 columns of patches are test, the one before


class ImageDataError(ValueError):
    """Bad image input: the message is one line naming the file and what to do."""


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray | None  # int64 [N] or None
    source: str  # one human line saying which data this is

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])


def default_image_spec() -> str:
    """`fashion-mnist` when the Debian package is installed, else `digits`."""
    return "fashion-mnist" if (FASHION_MNIST_DIR / FASHION_MNIST_FILES["train"].format("images", 3)).is_file() \
        else "digits"


def load_images(spec: str, *, split: str = "train", limit: int | None = None, column: str = "image") -> ImageSet:
    """The images (and labels, where there are any) that `spec` names; `split` ("train" or "test") applies to the
    named data sets only, `limit` keeps the first images, `column` is the Parquet column that holds them."""
    if limit is not None and limit < 1:
        raise ImageDataError(f"limit must be positive, got {limit}")
    if spec == "default":
        spec = default_image_spec()
    if spec in NAMED:
        if split not in FASHION_MNIST_FILES:
            raise ImageDataError(f"{spec} has the splits train and test, not {split!r}")
        if spec == "fashion-mnist":
            data = _fashion_mnist(split, limit)
        else:
            data = _colour_patches(split) if spec == "colour-patches" else _digits(split)
    else:
        data = _from_path(Path(spec), limit, column)
    if not len(data.images):
        raise ImageDataError(f"{spec} holds no images")
    if limit is not None and limit <= len(data.images):  # (IDX and Parquet readers stop at the limit already)
        labels = None if data.labels is None else data.labels[:limit]
        data = ImageSet(data.images[:limit], labels, f"{data.source}, first {limit}")
    return data


def image_shape(spec: str, *, split: str = "train", column: str = "image") -> tuple[int, int, int]:
    """(H, W, C) of the images `spec` names, as `load_images(spec, split=split, limit=1).shape` gives it (and with
    the same ImageDataError on bad data), reading as little as possible: nothing for digits, a header for a
    uint8 .npy array, one image for the rest (IDX files and Parquet files are read up to their first image)."""
    if spec == "default":
        spec = default_image_spec()
    if spec in ("digits", "colour-patches") and split in FASHION_MNIST_FILES:
        return DIGITS_SHAPE if spec == "digits" else PATCH_SHAPE
    path = Path(spec)
    if spec not in NAMED and path.name.lower().endswith(".npy") and path.is_file():
        shape = _npy_header_shape(path)
        if shape is not None:
            return shape
    return load_images(spec, split=split, limit=1, column=column).shape


def _fashion_mnist(split: str, limit: int | None) -> ImageSet:
    images = FASHION_MNIST_DIR / FASHION_MNIST_FILES[split].format("images", 3)
    if not images.is_file():
        raise ImageDataError(f"Fashion-MNIST is not installed ({images} not found): install it with "
                             "`apt-get install dataset-fashion-mnist`, or use the data set \"digits\"")
    labels = read_idx(FASHION_MNIST_DIR / FASHION_MNIST_FILES[split].format("labels", 1), limit).astype(np.int64)
    return ImageSet(read_idx(images, limit)[..., None], labels,
                    f"Fashion-MNIST {split} split (Debian package dataset-fashion-mnist, {FASHION_MNIST_DIR})")


def _digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    is_test = np.arange(len(digits.images)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    keep = is_test if split == "test" else ~is_test
    images = np.rint(digits.images[keep] * (255 / 16)).astype(np.uint8)[..., None]  # values 0..16
    return ImageSet(images, digits.target[keep].astype(np.int64),
                    f"scikit-learn digits {split} split (8×8, every {DIGITS_TEST_EVERY}th image is test)")


def _colour_patches(split: str) -> ImageSet:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    h, w, c = PATCH_SHAPE
    images, labels = [], []
    for label, (name, photo) in enumerate(sorted(zip(photos.filenames, photos.images))):  # china, flower
        rows, cols = photo.shape[0] // 2, photo.shape[1] // 2
        halved = photo[:2 * rows, :2 * cols].reshape(rows, 2, cols, 2, c).astype(np.uint16).sum((1, 3))
        halved = ((halved + 2) // 4).astype(np.uint8)  # the rounded mean of each 2×2 block
        n_rows, n_cols = rows // h, cols // w
        patches = halved[:n_rows * h, :n_cols * w].reshape(n_rows, h, n_cols, w, c).swapaxes(1, 2)
        first_test = n_cols - PATCH_TEST_COLUMNS
        kept = patches[:, first_test:] if split == "test" else patches[:, :first_test - 1]  # a column between
        images.append(kept.reshape(-1, h, w, c))
        labels.append(np.full(len(images[-1]), label, np.int64))
    return ImageSet(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                    f"colour-patches {split} split (8×8 RGB patches of scikit-learn's sample photos china.jpg and "
                    f"flower.jpg, halved; the last {PATCH_TEST_COLUMNS} columns of patches are test)")


def _from_path(path: Path, limit: int | None, column: str) -> ImageSet:
    if not path.exists():
        raise ImageDataError(f"{path}: no such file or folder; give an IDX file (.idx3-ubyte[.gz]), a .npy or "
                             f".parquet file, a folder of PNG/JPEG images, or one of {', '.join(NAMED)}")
    if path.is_dir():
        return _folder(path, limit)
    name = path.name.lower()
    if name.endswith(("idx3-ubyte", "idx3-ubyte.gz")):  # train-images-idx3-ubyte, x.idx3-ubyte.gz, ...
        images = read_idx(path, limit)
        if images.ndim != 3:
            raise ImageDataError(f"{path} holds an array of shape {images.shape}, not images [N, H, W]")
        labels_path = path.with_name(path.name.replace("images", "labels").replace("idx3", "idx1"))
        labels = read_idx(labels_path, limit).astype(np.int64) if labels_path != path and labels_path.is_file() \
            else None
        return ImageSet(images[..., None], labels, f"IDX file {path}")
    if name.endswith(".npy"):
        return ImageSet(_npy(path), None, f"NumPy file {path}")
    if name.endswith(".parquet"):
        return ImageSet(_parquet(path, limit, column), None, f"Parquet file {path}, column {column!r}")
    if name.endswith(IMAGE_EXTENSIONS):
        return ImageSet(_decode(path.read_bytes(), path)[None], None, f"image file {path}")
    raise ImageDataError(f"{path}: unknown image file type; give an IDX file (.idx3-ubyte[.gz]), a .npy or .parquet "
                         "file, or PNG/JPEG images (a folder or one file)")


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """An IDX array of unsigned bytes (the MNIST format: magic 0 0 8 ndim, then ndim big-endian sizes), optionally
    gzipped; with `limit`, only the first `limit` items are read."""
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != 8:
                raise ImageDataError(f"{path} is not an IDX file of unsigned bytes (its header is {magic.hex()}); "
                                     "give an MNIST-style .idx3-ubyte file")
            header = f.read(4 * magic[3])
            shape = np.frombuffer(header[:len(header) // 4 * 4], ">u4").astype(int).tolist()
            if limit is not None and shape:
                shape[0] = min(shape[0], limit)
            data = f.read(int(np.prod(shape)))
    except (OSError, EOFError) as e:
        raise ImageDataError(f"{path} cannot be read ({e}); replace it") from None
    if len(shape) != magic[3] or len(data) != np.prod(shape):
        raise ImageDataError(f"{path} is truncated (expected {shape}); replace it")
    return np.frombuffer(bytearray(data), np.uint8).reshape(shape)  # bytearray: writable, as torch wants


def _npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageDataError(f"{path} is not a readable .npy array ({str(e).splitlines()[0]}); replace it") from None
    if a.ndim == 3:
        a = a[..., None]
    _check_npy_shape(path, a.shape)
    if a.dtype.kind == "f" and a.size and 0 <= a.min() and a.max() <= 1:
        a = np.rint(a * 255)  # floats in [0, 1]
    elif a.dtype != np.uint8:
        raise ImageDataError(f"{path} holds {a.dtype} values: give uint8 pixels (0..255) or floats in [0, 1]")
    return a.astype(np.uint8)[..., :3]  # RGBA: alpha dropped


def _check_npy_shape(path: Path, shape: tuple) -> None:
    if len(shape) != 4 or shape[-1] not in (1, 3, 4):
        raise ImageDataError(f"{path} holds an array of shape {shape}: images must be [N, H, W] or [N, H, W, C] "
                             "with C = 1, 3 or 4")


def _npy_header_shape(path: Path) -> tuple[int, int, int] | None:
    """(H, W, C) as `_npy` would give it, from the header of a complete, non-empty uint8 .npy file; None for any
    other file, which `_npy` then reads in full (float values must be checked, bad files named as numpy names them)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data_start = f.tell()
    except (OSError, ValueError):
        return None
    if dtype != np.uint8 or not shape or not shape[0] or path.stat().st_size < data_start + int(np.prod(shape)):
        return None
    shape = shape + (1,) if len(shape) == 3 else shape
    _check_npy_shape(path, shape)
    return shape[1], shape[2], min(shape[3], 3)  # RGBA: alpha dropped


def _parquet(path: Path, limit: int | None, column: str) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(path)
        names = table_file.schema_arrow.names
        if column not in names:
            raise ImageDataError(f"{path} has no column {column!r} (it has {', '.join(names)}); pass the column "
                                 "that holds the encoded images")
        images = []
        for batch in table_file.iter_batches(columns=[column], batch_size=min(limit or 1024, 1024)):
            for value in batch.column(0).to_pylist():
                data = value.get("bytes") if isinstance(value, dict) else value  # HF datasets: {bytes, path}
                if not isinstance(data, bytes):
                    raise ImageDataError(f"{path}, row {len(images)}: column {column!r} holds "
                                         f"{type(data).__name__}, not encoded PNG/JPEG bytes")
                images.append(_decode(data, f"{path}, row {len(images)}"))
                if len(images) == limit:
                    break
            if len(images) == limit:
                break
    except ImageDataError:
        raise
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ImageDataError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]}); replace it") from None
    return _stack(images, [f"{path}, row {i}" for i in range(len(images))], path)


def _folder(path: Path, limit: int | None) -> ImageSet:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())[:limit]
    if not files:
        raise ImageDataError(f"{path} holds no PNG/JPEG files ({', '.join(IMAGE_EXTENSIONS)}); give a folder of "
                             "images")
    images = _stack([_decode(f.read_bytes(), f) for f in files], files, path)
    return ImageSet(images, None, f"image folder {path} ({len(files)} files)")


def _decode(data: bytes, name) -> np.ndarray:
    """One encoded image as uint8 [H, W, C]: grayscale C=1, everything else RGB (alpha dropped)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes now, so a truncated file fails here
            gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            a = np.asarray(img.convert("L" if gray else "RGB"))
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise ImageDataError(f"{name} is not a readable PNG/JPEG image ({e}); remove or replace it") from None
    return a[..., None] if gray else a


def _stack(images: list[np.ndarray], names: list, source: Path) -> np.ndarray:
    """One array of images that must all have the first one's shape."""
    if not images:
        raise ImageDataError(f"{source} holds no images")
    for image, name in zip(images, names):
        if image.shape != images[0].shape:
            raise ImageDataError(f"{name} is {_dims(image.shape)} but {names[0]} is {_dims(images[0].shape)}: "
                                 f"images in {source} must all have the same size and channels; resize them")
    return np.stack(images)


def _dims(shape: tuple) -> str:
    return "×".join(map(str, shape))  # H×W×C


def image_grid(images: np.ndarray, cols: int = 8, pad: int = 1) -> np.ndarray:
    """Images uint8 [N, H, W, C] tiled into one image, `cols` per row, with `pad` black pixels between them."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i, image in enumerate(images):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + h, x:x + w] = image
    return grid


def save_png(path: Path, image: np.ndarray) -> None:
    """Write one uint8 image [H, W, C] (C = 1 or 3) as PNG."""
    from PIL import Image

    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Images [N, H, W, C] of integer levels at 1/factor resolution: each factor × factor block's mean, rounded half
    up, so the levels stay the same (binary images stay binary). The pyramid stream's low-resolution images."""
    n, height, width, channels = images.shape
    if height % factor or width % factor:
        raise ImageDataError(f"a factor of {factor} must divide the images' height and width ({height} × {width})")
    blocks = images.reshape(n, height // factor, factor, width // factor, factor, channels).astype(np.float64)
    return np.floor(blocks.mean(axis=(2, 4)) + 0.5).astype(images.dtype)
