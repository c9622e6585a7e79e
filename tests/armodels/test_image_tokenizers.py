"""Image tokenizers (VQ-VAE, FSQ, LFQ) trained for a few seconds on real images (scikit-learn's digits): codes and their
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
from armodels.image_tokenizer import (
    ImageTokenizer,
    is_image_tokenizer,
    make_config,
    read_code_grids,
    train_image_tokenizer,
    write_code_shards,
)
from armodels.images import load_images
from armodels.lfq import LFQ, MAX_BITS, LFQConfig, entropy_terms
from armodels.shards import load_token_stream, read_manifest
from armodels.vqvae import VQVAE, VQVAEConfig
from pipelines.cli import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
# 8×8 digits, halved once: a 4×4 grid of codes per image.
FSQ_SETTINGS = {"hidden": 32, "downsample": 1, "levels": (5, 5, 5)}
VQ_SETTINGS = {"hidden": 16, "downsample": 1, "codebook_size": 64}
LFQ_SETTINGS = {"hidden": 32, "downsample": 1, "bits": 6}


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


@pytest.fixture(scope="module")
def lfq(digits):
    train, test = digits
    lines = []
    tokenizer = train_image_tokenizer("lfq", train, config=LFQ_SETTINGS, steps=300, batch_size=32, lr=5e-3, test=test,
                                      log=lines.append)
    return tokenizer, lines


@pytest.mark.parametrize("name", ["fsq", "vq", "lfq"])
def test_encode_decode_shapes_and_determinism_across_save_and_load(request, digits, tmp_path, name):
    tokenizer = request.getfixturevalue(name)
    tokenizer = tokenizer[0] if name == "lfq" else tokenizer
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
    with pytest.raises(ValueError, match=r"levels must be integers ≥ 3 \(for two levels a channel"):
        FSQConfig(levels=(2, 2))  # tanh's shift would be undefined (NaN codes)
    with pytest.raises(ValueError, match=r"levels \(8, 8, 8, 8, 8, 8, 8\) make 2,097,152 codes, more than a "
                                         r"vocabulary may hold \(1,000,000\)"):
        FSQConfig(levels=(8,) * 7)


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
    one_line_error(code, err, "levels must be integers ≥ 3")
    other = replace(fsq.config)
    other.hidden = 8
    ImageTokenizer("fsq", FSQ(other), fsq.image_shape).save(tmp_path / "other")
    write_code_shards(fsq, load_images("digits", limit=5), tmp_path / "s", split="train")
    code, _, err = cli(capsys, "detokenize", tmp_path / "s", "--tokenizer", tmp_path / "other", "--out", tmp_path / "d")
    one_line_error(code, err, "is not the one that made")


# LFQ: lookup-free quantization.

def test_lfq_codes_and_signs_round_trip_for_every_code():
    model = LFQ(LFQConfig(hidden=8, bits=5))
    assert model.codebook_size == 32
    codes = torch.arange(32)
    digits = model.codes_to_digits(codes)
    assert set(digits.flatten().tolist()) == {0, 1} and len({tuple(d) for d in digits.tolist()}) == 32
    assert torch.equal(model.digits_to_codes(digits), codes)
    assert torch.equal(digits[5], torch.tensor([1, 0, 1, 0, 0]))  # the first channel is the least significant bit
    # Latents of any magnitude quantize to their signs; the code is those signs' bits (0 counts as negative).
    signs = digits.float() * 2 - 1
    magnitudes = torch.rand(32, 5) * 3 + 0.01
    magnitudes[0, 0] = 0.0
    z = (signs * magnitudes).T.reshape(1, 5, 1, 32).requires_grad_()
    z_q, got, loss = model.quantize(z)
    assert torch.equal(got.flatten(), codes)
    assert torch.equal(z_q, model.codes_to_latents(got)) and set(z_q.flatten().tolist()) == {-1.0, 1.0}
    assert torch.equal(model.codes_to_latents(codes.view(1, 1, 32)), signs.T.reshape(1, 5, 1, 32))
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through the sign
    assert loss.ndim == 0 and loss.requires_grad


def test_lfq_loss_is_the_commitment_and_entropy_penalty():
    model = LFQ(LFQConfig(hidden=8, bits=3, commitment=0.5, entropy_weight=0.2, temperature=2.0))
    z = torch.randn(2, 3, 4, 4)
    _, _, loss = model.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    per_sample, codebook = entropy_terms(flat, 2.0)
    commitment = ((flat - torch.where(flat > 0, 1.0, -1.0)) ** 2).mean()
    assert loss.item() == pytest.approx(0.5 * commitment.item() + 0.2 * (per_sample - codebook).item(), rel=1e-5)


def test_lfq_entropy_penalty_on_hand_made_latents():
    def entropy(p):
        return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)

    # The formula: with τ = 4, p(+1 | z) = sigmoid(z). Bit 0 is confident both ways (p .75 and .25: balanced over
    # the batch), bit 1 leans the same way in both latents (p .75).
    z = torch.tensor([[math.log(3), math.log(3)], [-math.log(3), math.log(3)]])
    per_sample, codebook = entropy_terms(z, 4.0)
    assert per_sample.item() == pytest.approx(entropy(0.75), rel=1e-5)  # per bit: (H(.75) + H(.75)) / 2
    assert codebook.item() == pytest.approx((math.log(2) + entropy(0.75)) / 2, rel=1e-5)

    def penalty(z, temperature=1.0):
        per_sample, codebook = entropy_terms(z, temperature)
        return (per_sample - codebook).item()

    every_code = LFQ(LFQConfig(hidden=8, bits=4)).codes_to_latents(torch.arange(16).view(1, 1, 16))
    every_code = every_code.permute(0, 2, 3, 1).reshape(16, 4)  # ±1: each of the 16 codes once
    confident_diverse = penalty(every_code * 5)
    uniform = penalty(torch.zeros(16, 4))  # every latent on the boundary: each code 1/16
    collapsed = penalty(torch.full((16, 4), 5.0))  # confident, one code
    assert confident_diverse == pytest.approx(-math.log(2), abs=1e-6)  # per bit: 0 − ln 2
    assert uniform == pytest.approx(0.0, abs=1e-6) and collapsed == pytest.approx(0.0, abs=1e-4)
    assert confident_diverse < uniform and confident_diverse < collapsed
    assert penalty(every_code * 5, temperature=100.0) > confident_diverse  # a hotter softmax: less confident
    # Its gradient pulls a latent away from the boundary and a bit that is always +1 towards −1.
    z = (every_code * 0.1).requires_grad_()
    per_sample, codebook = entropy_terms(z, 1.0)
    (per_sample - codebook).backward()
    assert (z.grad * z < 0).all()  # descent moves each latent away from 0
    z = torch.full((8, 1), 0.5, requires_grad=True)
    per_sample, codebook = entropy_terms(z, 1.0)
    (-codebook).backward()
    assert (z.grad > 0).all()  # descent lowers it towards a balanced bit


def test_lfq_training_lowers_the_mse_and_uses_the_codes(lfq, digits):
    tokenizer, lines = lfq
    test = digits[1].images
    torch.manual_seed(0)
    untrained = ImageTokenizer("lfq", LFQ(make_config("lfq", {**LFQ_SETTINGS, "in_channels": 1})), (8, 8, 1))
    before, m = untrained.evaluate(test), tokenizer.meta["metrics"]
    assert tokenizer.codebook_size == 64 and m["bits_per_image"] == pytest.approx(16 * 6)
    assert m["mse"] < before["mse"] / 2 and m["psnr"] > 15
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / m["mse"]))
    assert m["usage"] >= 0.5 and 8 < m["perplexity"] <= 64 and m["perplexity"] > 2 * before["perplexity"]
    assert len(lines) == 10 and lines[-1].startswith("lfq step 300/300  loss ") and "usage" in lines[-1]


@pytest.mark.parametrize("bits, ok", [(0, False), (1, True), (MAX_BITS, True), (MAX_BITS + 1, False), (2.5, False)])
def test_lfq_bits_are_bounded_by_the_vocabulary(bits, ok):
    if ok:
        assert make_config("lfq", {"bits": bits}).codebook_size == 2 ** bits <= 1_000_000
    else:
        with pytest.raises(ValueError, match=rf"bits must be an integer from 1 to {MAX_BITS} \(2\^bits codes, at most "
                                             r"1,000,000\), got"):
            make_config("lfq", {"bits": bits})


@pytest.mark.parametrize("key, value", [("entropy_weight", -0.1), ("commitment", float("nan")), ("temperature", 0)])
def test_lfq_weights_must_be_valid(key, value):
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        make_config("lfq", {key: value})


def test_cli_trains_an_lfq_tokenizer_and_tokenizes_with_it(tmp_path, capsys):
    code, out, err = cli(capsys, "tokenizer", "train", "lfq", "--data", "digits", "--limit", "200", "--steps", "20",
                         "--hidden", "8", "--downsample", "1", "--bits", "5", "--entropy-weight", "0.2",
                         "--out", tmp_path / "tok")
    assert code == 0, err
    assert "lfq step 20/20" in out and "lfq tokenizer: 32 codes, 4×4 grid per image (80 bits/image)" in out
    assert all(f" {metric} " in out for metric in ("mse", "psnr", "usage", "perplexity"))
    assert "test metrics: mse" in out and str(tmp_path / "tok") in out
    tokenizer = ImageTokenizer.load(tmp_path / "tok")
    assert tokenizer.kind == "lfq" and tokenizer.config.bits == 5 and tokenizer.config.entropy_weight == 0.2
    code, out, err = cli(capsys, "tokenize", "--tokenizer", tmp_path / "tok", "--input", "digits", "--split", "test",
                         "--out", tmp_path / "s")
    assert code == 0, err
    assert "→ 5,744 codes (4×4 per image, 32 symbols)" in out
    code, out, err = cli(capsys, "detokenize", tmp_path / "s", "--out", tmp_path / "d")
    assert code == 0, err
    assert len(list((tmp_path / "d").glob("0*.png"))) == 359
    for bits in ("0", str(MAX_BITS + 1)):
        code, _, err = cli(capsys, "tokenizer", "train", "lfq", "--bits", bits, "--out", tmp_path / "t")
        one_line_error(code, err, "bits must be an integer from 1 to 19")
    code, _, err = cli(capsys, "tokenizer", "train", "lfq", "--entropy-weight", "-1", "--out", tmp_path / "t")
    one_line_error(code, err, "entropy_weight must be ≥ 0")
    assert not (tmp_path / "t").exists()
