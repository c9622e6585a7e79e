"""Image data readers on real files: PNG/JPEG folders, .npy, Parquet of encoded images, IDX (plain and gzipped),
Fashion-MNIST (when the Debian package is installed) and scikit-learn's digits; every bad input is one line naming
the file."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from armodels import images as image_module
from armodels.images import ImageDataError, default_image_spec, image_grid, image_shape, load_images, save_png

RNG = np.random.default_rng(0)


def gray(n: int, h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w), dtype=np.uint8)


def png_bytes(a: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def write_idx(path, a: np.ndarray) -> None:
    header = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
    (gzip.open if path.name.endswith(".gz") else open)(path, "wb").write(header + a.tobytes())


def refused(spec: str, *parts: str, **options) -> None:
    """load_images(spec, **options) fails with an ImageDataError of one line that contains each of `parts`."""
    with pytest.raises(ImageDataError) as e:
        load_images(spec, **options)
    message = str(e.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_png_folder_is_read_recursively_in_path_order(tmp_path):
    a = gray(4)
    for i, name in enumerate(["b/2.png", "a.png", "b/1.PNG", "c.png"]):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(png_bytes(a[i]))
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint8 and data.images.shape == (4, 6, 5, 1) and data.labels is None
    order = [1, 2, 0, 3]  # a.png, b/1.PNG, b/2.png, c.png
    assert np.array_equal(data.images[..., 0], a[order])
    assert str(tmp_path) in data.source and "4 files" in data.source
    assert load_images(str(tmp_path), limit=2).images.shape[0] == 2


def test_rgb_rgba_and_jpeg_images_are_rgb(tmp_path):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], -1)
    (tmp_path / "1.png").write_bytes(png_bytes(rgb))
    (tmp_path / "2.png").write_bytes(png_bytes(rgba))
    (tmp_path / "3.jpg").write_bytes(png_bytes(np.full((8, 8, 3), 200, np.uint8), fmt="JPEG"))
    data = load_images(str(tmp_path)).images
    assert data.shape == (3, 8, 8, 3)
    assert np.array_equal(data[0], rgb) and np.array_equal(data[1], rgb)  # alpha dropped
    assert np.abs(data[2].astype(int) - 200).max() <= 2  # JPEG is lossy


def test_npy_uint8_and_float_arrays(tmp_path):
    a = gray(3)
    np.save(tmp_path / "u8.npy", a)
    np.save(tmp_path / "f.npy", a / 255.0)
    np.save(tmp_path / "rgba.npy", np.repeat(a[..., None], 4, -1))
    assert np.array_equal(load_images(str(tmp_path / "u8.npy")).images[..., 0], a)
    assert np.array_equal(load_images(str(tmp_path / "f.npy")).images[..., 0], a)
    assert load_images(str(tmp_path / "rgba.npy")).images.shape == (3, 6, 5, 3)
    np.save(tmp_path / "i32.npy", a.astype(np.int32))
    refused(str(tmp_path / "i32.npy"), "i32.npy", "int32", "uint8")
    np.save(tmp_path / "flat.npy", a.reshape(3, -1))
    refused(str(tmp_path / "flat.npy"), "flat.npy", "(3, 30)")


def test_parquet_of_png_bytes_plain_or_as_hf_datasets_store_them(tmp_path):
    a = gray(5)
    encoded = [png_bytes(x) for x in a]
    pq.write_table(pa.table({"image": encoded, "label": list(range(5))}), tmp_path / "plain.parquet")
    structs = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)]
    pq.write_table(pa.table({"img": structs}), tmp_path / "hf.parquet", row_group_size=2)
    assert np.array_equal(load_images(str(tmp_path / "plain.parquet")).images[..., 0], a)
    data = load_images(str(tmp_path / "hf.parquet"), column="img", limit=3)
    assert np.array_equal(data.images[..., 0], a[:3]) and "first 3" in data.source
    refused(str(tmp_path / "hf.parquet"), "hf.parquet", "no column 'image'", "img")


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images.idx3-ubyte.gz"])
def test_idx_files_with_labels_beside_them(tmp_path, name):
    a, labels = gray(7, 28, 28), np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / name, a)
    data = load_images(str(tmp_path / name), limit=5)
    assert np.array_equal(data.images[..., 0], a[:5]) and data.labels is None
    write_idx(tmp_path / name.replace("images", "labels").replace("idx3", "idx1"), labels)
    data = load_images(str(tmp_path / name), split="test")  # split: ignored for paths
    assert np.array_equal(data.images[..., 0], a) and np.array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    write_idx(path, gray(3))
    path.write_bytes(path.read_bytes()[:-10])
    refused(str(path), str(path), "truncated")


@pytest.mark.skipif(default_image_spec() != "fashion-mnist", reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    test = load_images("fashion-mnist", split="test", limit=100)
    assert test.images.shape == (100, 28, 28, 1) and test.images.dtype == np.uint8
    assert test.labels.shape == (100,) and set(test.labels) <= set(range(10))
    assert "Fashion-MNIST test split" in test.source and "dataset-fashion-mnist" in test.source
    assert load_images("default", limit=3).images.shape == (3, 28, 28, 1)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "FASHION_MNIST_DIR", tmp_path)
    assert default_image_spec() == "digits"
    refused("fashion-mnist", "apt-get install dataset-fashion-mnist", '"digits"')
    assert load_images("default", split="test").images.shape[1:] == (8, 8, 1)


def test_digits_split_deterministically():
    train, test = load_images("digits"), load_images("digits", split="test")
    assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
    assert train.images.max() == 255 and test.images.min() == 0
    from sklearn.datasets import load_digits

    every = load_digits().images
    assert np.array_equal(test.images[1, ..., 0], np.rint(every[9] * 255 / 16))
    refused("digits", "train and test", "'val'", split="val")


def test_bad_paths_are_one_line_naming_the_file(tmp_path):
    refused(str(tmp_path / "missing"), "missing", "no such file")
    (tmp_path / "empty").mkdir()
    refused(str(tmp_path / "empty"), "empty", "no PNG/JPEG files")
    (tmp_path / "x.csv").write_text("1,2")
    refused(str(tmp_path / "x.csv"), "x.csv", "unknown image file type")
    with pytest.raises(ImageDataError):
        load_images("digits", limit=0)


def test_mixed_sizes_and_channels_name_the_first_file_that_differs(tmp_path):
    for folder, other in (("sizes", gray(1, 7, 5)[0]), ("channels", RNG.integers(0, 256, (6, 5, 3), np.uint8))):
        (tmp_path / folder).mkdir()
        for i, a in enumerate([gray(1)[0], gray(1)[0], other, gray(1)[0]]):
            (tmp_path / folder / f"{i}.png").write_bytes(png_bytes(a))
        shape = other.shape if other.ndim == 3 else (*other.shape, 1)
        refused(str(tmp_path / folder), f"2.png is {'×'.join(map(str, shape))}", "0.png is 6×5×1")


def test_corrupt_png_is_named(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes(gray(1)[0]))
    (tmp_path / "torn.png").write_bytes(png_bytes(gray(1, 60, 60)[0])[:80])
    refused(str(tmp_path), "torn.png", "not a readable PNG/JPEG image")
    pq.write_table(pa.table({"image": [b"not a png"]}), tmp_path / "bad.parquet")
    refused(str(tmp_path / "bad.parquet"), "bad.parquet, row 0", "not a readable PNG/JPEG image")


def test_image_shape_is_load_images_shape_read_cheaply(tmp_path, monkeypatch):
    """What a study plans from: the shape of one image, without reading the data (digits: not even scikit-learn's);
    bad data gives load_images' own error."""
    a = gray(4)
    np.save(tmp_path / "u8.npy", a)
    np.save(tmp_path / "rgba.npy", np.repeat(a[..., None], 4, -1))
    np.save(tmp_path / "f.npy", a / 255.0)
    write_idx(tmp_path / "x-images-idx3-ubyte.gz", a)
    pq.write_table(pa.table({"image": [png_bytes(x) for x in a]}), tmp_path / "p.parquet")
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "0.png").write_bytes(png_bytes(a[0]))
    specs = ["u8.npy", "rgba.npy", "f.npy", "x-images-idx3-ubyte.gz", "p.parquet", "pngs"]
    expected = {spec: load_images(str(tmp_path / spec), limit=1).shape for spec in specs}
    digits = load_images("digits", split="test", limit=1).shape
    np.save(tmp_path / "big.npy", np.zeros((2, 3, 3), np.uint8))
    monkeypatch.setattr(np, "load", None)  # a uint8 .npy file's header is enough
    assert image_shape(str(tmp_path / "big.npy")) == (3, 3, 1)
    monkeypatch.undo()
    monkeypatch.setattr(image_module, "_digits", None)
    assert image_shape("digits", split="test") == digits == (8, 8, 1)
    for spec in specs:
        assert image_shape(str(tmp_path / spec)) == expected[spec], spec
    np.save(tmp_path / "flat.npy", a.reshape(4, -1))
    np.save(tmp_path / "none.npy", np.zeros((0, 6, 5), np.uint8))
    (tmp_path / "torn.npy").write_bytes((tmp_path / "u8.npy").read_bytes()[:-10])
    for bad in ("flat.npy", "none.npy", "torn.npy", "missing.npy", "missing"):
        with pytest.raises(ImageDataError) as loading:
            load_images(str(tmp_path / bad), limit=1)
        with pytest.raises(ImageDataError) as planning:
            image_shape(str(tmp_path / bad))
        assert str(planning.value) == str(loading.value)


def test_grid_png_round_trip(tmp_path):
    a = RNG.integers(0, 256, (10, 4, 3, 3), dtype=np.uint8)
    grid = image_grid(a, cols=4, pad=1)
    assert grid.shape == (3 * 5 + 1, 4 * 4 + 1, 3)
    assert np.array_equal(grid[1:5, 1:4], a[0]) and np.array_equal(grid[6:10, 5:8], a[5])
    save_png(tmp_path / "g.png", grid)
    assert np.array_equal(load_images(str(tmp_path)).images[0], grid)
