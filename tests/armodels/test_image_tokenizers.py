"""Image tokenizers (VQ-VAE, FSQ) trained for a few seconds on real images (scikit-learn's digits): codes and their
inverse, determinism across save/load, codebook usage, dead-code restarts, code shards, and the CLI with its bad
inputs."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from armodels.fsq import FSQ, FSQConfig
from armodels.image_tokenizer import (ImageTokenizer, is_image_tokenizer, read_code_grids, train_image_tokenizer,
                                      write_code_shards)
from armodels.images import load_images
from armodels.shards import load_token_stream, read_manifest
from armodels.vqvae import VQVAE, VQVAEConfig
from pipelines.cli import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
# 8×8 digits, halved once: a 4×4 grid of codes per image.
FSQ_SETTINGS = {"hidden": 32, "downsample": 1, "levels": (5, 5, 5)}
VQ_SETTINGS = {"hidden": 16, "downsample": 1, "codebook_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_images("digits"), load_images("digits", split="test")


@pytest.fixture(scope="module")
def fsq(digits):
    train, test = digits
    return train_image_tokenizer("fsq", train, config=FSQ_SETTINGS, steps=300, batch_size=32, lr=5e-3, test=test,
                                 log=lambda line: None)


@pytest.fixture(scope="module")
def vq(digits):
    train, test = digits
    return train_image_tokenizer("vqvae", train, config=VQ_SETTINGS, steps=300, batch_size=32, test=test,
                                 log=lambda line: None)


@pytest.mark.parametrize("name", ["fsq", "vq"])
def test_encode_decode_shapes_and_determinism_across_save_and_load(request, digits, tmp_path, name):
    tokenizer = request.getfixturevalue(name)
    test = digits[1].images[:100]
    assert tokenizer.image_shape == (8, 8, 1) and tokenizer.grid_shape == (4, 4)
    codes = tokenizer.encode(test)
    assert codes.shape == (100, 4, 4) and codes.dtype == np.int64
    assert 0 <= codes.min() and codes.max() < tokenizer.codebook_size
    assert np.array_equal(tokenizer.encode(test), codes)
    images = tokenizer.decode(codes)
    assert images.shape == test.shape and images.dtype == np.uint8
    tokenizer.save(tmp_path / "tok")
    loaded = ImageTokenizer.load(tmp_path / "tok")
    assert loaded.sha256 == tokenizer.sha256 and loaded.kind == tokenizer.kind
    assert loaded.meta["metrics"] == tokenizer.meta["metrics"]
    assert np.array_equal(loaded.encode(test), codes) and np.array_equal(loaded.decode(codes), images)
    with pytest.raises(ValueError, match=r"takes uint8 \[N, 8, 8, 1\]"):
        tokenizer.encode(test[..., 0])


def test_metrics_of_a_short_run(fsq, vq):
    for tokenizer, bits in ((fsq, 16 * math.log2(125)), (vq, 16 * 6)):
        m = tokenizer.meta["metrics"]
        assert m["bits_per_image"] == pytest.approx(bits)
        assert m["psnr"] == pytest.approx(10 * math.log10(1 / m["mse"])) and m["psnr"] > 15
        assert 1 < m["perplexity"] <= tokenizer.codebook_size
        assert "digits test split" in tokenizer.meta["evaluated_on"]
    assert fsq.meta["metrics"]["usage"] >= 0.9  # FSQ has no codebook to collapse
    assert vq.meta["metrics"]["usage"] >= 0.8 and vq.meta["restarts"] > 0


def test_training_is_seeded(digits):
    def run(seed):
        return train_image_tokenizer("fsq", digits[0], config={"hidden": 8, "downsample": 1, "levels": (3, 3)},
                                     steps=20, batch_size=16, seed=seed, log=lambda line: None)

    assert run(0).sha256 == run(0).sha256 != run(1).sha256


def test_fsq_codes_and_levels_round_trip_for_every_code():
    model = FSQ(FSQConfig())
    assert model.codebook_size == 1000
    codes = torch.arange(1000)
    digits = model.codes_to_digits(codes)
    assert (digits >= 0).all() and (digits < model.levels).all()
    assert len({tuple(d) for d in digits.tolist()}) == 1000 and torch.equal(model.digits_to_codes(digits), codes)
    # Latents that the bound maps to (just inside) each level value quantize back to their code.
    values = (digits - model.levels // 2).float()
    half = (model.levels - 1) * (1 - model.config.epsilon) / 2
    offset = (model.levels % 2 == 0).float() * 0.5
    target = torch.maximum(torch.minimum(values, half - offset - 0.01), -half - offset + 0.01)
    z = torch.atanh((target + offset) / half) - torch.atanh(offset / half)
    z = z.T.reshape(1, 4, 1, 1000).requires_grad_()
    z_q, got, _ = model.quantize(z)
    assert torch.equal(got.flatten(), codes)
    assert torch.allclose(z_q, model.codes_to_latents(got)) and z_q.abs().max() <= 1
    z_q.sum().backward()
    assert (z.grad != 0).all()  # straight through the rounding


def test_dead_codes_far_from_the_data_are_reseeded(digits):
    """A codebook moved far from every encoder output: without restarts one code takes all the data; with them the
    codes come back as their EMA counts decay."""
    x = torch.from_numpy(digits[0].images[:64]).permute(0, 3, 1, 2).float() / 255
    test = torch.from_numpy(digits[1].images).permute(0, 3, 1, 2).float() / 255

    def usage_after_steps(threshold: float) -> tuple[float, VQVAE]:
        torch.manual_seed(0)
        model = VQVAE(VQVAEConfig(**VQ_SETTINGS, decay=0.8, dead_code_threshold=threshold)).train()
        model.initialized.fill_(True)  # no k-means initialisation
        uniform = 64 * 16 / 64  # vectors per batch each code would get if all were used equally
        model.codebook.copy_(100 + torch.randn_like(model.codebook))
        model.ema_count.fill_(uniform)
        model.ema_sum.copy_(model.codebook * uniform)
        for _ in range(30):
            model(x)
        return model.encode(test).unique().numel() / 64, model

    stuck, _ = usage_after_steps(0.0)
    revived, model = usage_after_steps(0.1)
    assert stuck <= 2 / 64
    assert revived >= 0.5 and model.restarts > 0
    assert model.codebook.norm(dim=1).max() < 50  # every code was re-seeded near the data


def test_code_shards_round_trip(fsq, digits, tmp_path):
    test = digits[1]
    manifest = write_code_shards(fsq, test, tmp_path / "s", split="test", shard_tokens=1000)
    codes = fsq.encode(test.images)
    assert len(manifest.shards) > 1 and manifest.documents == len(test.images)
    assert manifest.eod_id is None and manifest.vocab_size == 125 and manifest.tokenizer_sha256 == fsq.sha256
    assert manifest.bytes == test.images.size and read_manifest(tmp_path / "s").split == "test"
    assert np.array_equal(read_code_grids(tmp_path / "s"), codes)
    assert np.array_equal(read_code_grids(tmp_path / "s", (4, 4)), codes)
    stream = load_token_stream(tmp_path / "s")
    assert len(stream) == len(test.images) * 16 and np.array_equal(stream, codes.ravel())
    assert ImageTokenizer.load(tmp_path / "s" / "tokenizer").sha256 == fsq.sha256
    with pytest.raises(ValueError, match="document 0 has 16 tokens, not a 2×4 code grid"):
        read_code_grids(tmp_path / "s", (2, 4))


def test_loading_a_broken_tokenizer_is_one_line(fsq, tmp_path):
    fsq.save(tmp_path / "tok")
    for name, breaks, error, message in [
        ("no-weights", lambda d: (d / "model.safetensors").unlink(), FileNotFoundError, "model.safetensors not found"),
        ("bad-json", lambda d: (d / "tokenizer.json").write_text("{"), ValueError, "is not valid JSON"),
        ("corrupt", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-1] + b"x"),
         ValueError, "is corrupt"),
        ("not-image", lambda d: (d / "tokenizer.json").write_text('{"model": {"type": "BPE"}}'), ValueError,
         "does not describe an image tokenizer"),
    ]:
        shutil.copytree(tmp_path / "tok", tmp_path / name)
        breaks(tmp_path / name)
        with pytest.raises(error) as e:
            ImageTokenizer.load(tmp_path / name)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert is_image_tokenizer(tmp_path / "tok") and not is_image_tokenizer(tmp_path / "not-image")
    with pytest.raises(ValueError, match="unknown fsq setting 'codebook_size'"):
        train_image_tokenizer("fsq", load_images("digits", limit=10), config={"codebook_size": 5}, steps=1)


# The command line: training through the real entry point, the rest in this process (the same `main`).

def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]


def png(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cli_trains_tokenizes_and_detokenizes_images(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "tokenizer", "train", "fsq", "--data", "digits",
                        "--limit", "200", "--steps", "20", "--hidden", "8", "--downsample", "1", "--levels", "4,4,4",
                        "--out", str(tmp_path / "tok")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fsq tokenizer: 64 codes, 4×4 grid per image" in r.stdout and "test metrics: mse" in r.stdout
    assert "usage" in r.stdout and str(tmp_path / "tok") in r.stdout
    assert "fsq step 20/20" in r.stdout

    code, out, err = cli(capsys, "tokenize", "--tokenizer", tmp_path / "tok", "--input", "digits", "--split", "test",
                         "--out", tmp_path / "s")
    assert code == 0, err
    assert "359 images of scikit-learn digits test split" in out
    assert "→ 5,744 codes (4×4 per image, 64 symbols) in 1 shards" in out
    code, out, err = cli(capsys, "detokenize", tmp_path / "s", "--out", tmp_path / "d")
    assert code == 0, err
    assert len(list((tmp_path / "d").glob("0*.png"))) == 359
    assert Image.open(tmp_path / "d" / "grid.png").size == (8 * 9 + 1, 8 * 9 + 1)
    tokenizer = ImageTokenizer.load(tmp_path / "tok")
    decoded = load_images(str(tmp_path / "d" / "000003.png"))
    assert np.array_equal(decoded.images[0], tokenizer.decode(read_code_grids(tmp_path / "s")[3:4])[0])


def test_cli_bad_image_inputs_exit_2_with_one_line(fsq, tmp_path, capsys):
    fsq.save(tmp_path / "tok")
    shutil.copytree(tmp_path / "tok", tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    folders = {"empty": [], "mixed": [np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)],
               "wrong-size": [np.zeros((6, 6), np.uint8)], "corrupt": [np.zeros((8, 8), np.uint8), None]}
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, a in enumerate(images):
            (tmp_path / name / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken" if a is None else png(a))

    def tokenize(tokenizer, data):
        return cli(capsys, "tokenize", "--tokenizer", tmp_path / tokenizer, "--input", data, "--out", tmp_path / "s")

    one_line_error(*tokenize("no-weights", "digits")[::2], "model.safetensors not found")
    one_line_error(*tokenize("tok", tmp_path / "empty")[::2], "holds no PNG/JPEG files")
    one_line_error(*tokenize("tok", tmp_path / "mixed")[::2], "1.png is 8×9×1 but")
    one_line_error(*tokenize("tok", tmp_path / "corrupt")[::2], "1.png is not a readable PNG/JPEG image")
    one_line_error(*tokenize("tok", tmp_path / "wrong-size")[::2], "images are 6×6×1 but the tokenizer")
    code, _, err = cli(capsys, "tokenizer", "train", "vqvae", "--data", tmp_path / "missing", "--out", tmp_path / "t")
    one_line_error(code, err, "missing: no such file or folder")
    code, _, err = cli(capsys, "tokenizer", "train", "fsq", "--levels", "1,5", "--out", tmp_path / "t")
    one_line_error(code, err, "levels must be integers ≥ 2")
    other = replace(fsq.config)
    other.hidden = 8
    ImageTokenizer("fsq", FSQ(other), fsq.image_shape).save(tmp_path / "other")
    write_code_shards(fsq, load_images("digits", limit=5), tmp_path / "s", split="train")
    code, _, err = cli(capsys, "detokenize", tmp_path / "s", "--tokenizer", tmp_path / "other", "--out", tmp_path / "d")
    one_line_error(code, err, "is not the one that made")
