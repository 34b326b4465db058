"""Images are decoded as what they show, in the local and the device path alike (both go through
``open_rgb``): EXIF orientation applied, 16-bit samples scaled, bombs and extreme shapes refused from the
header with a one-line error. Test images are made from foolbox's real ImageNet photos."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakegradient import FakeGradientError
from fakegradient.data import MAX_ASPECT_RATIO, MAX_PIXELS, foolbox_imagenet, open_rgb
from fakegradient.serving.client import preprocess

# torchvision's IMAGENET1K_V1 preset as plain data (what the server publishes for MobileNetV2)
SPEC = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear"}
ORIENTATION = 0x0112
# EXIF orientation → the transform that makes an upright picture look stored that way (the inverse of what
# a viewer applies to show it upright)
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int,
              rows: Iterable[bytes] | None) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): ``rows`` of raw samples, compressed as they
    come; ``None`` writes garbage for them (the header is right, decoding would fail)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                                             0, 0, 0))]
    data = b"not zlib data"
    if rows is not None:
        packer = zlib.compressobj(9)
        data = b"".join(packer.compress(b"\0" + row) for row in rows) + packer.flush()
    parts += [chunk(b"IDAT", data), chunk(b"IEND", b"")]
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Two real photos, upright, 8-bit RGB: a bull mastiff and a folding chair."""
    return [Image.open(s.path).convert("RGB") for s in foolbox_imagenet()[:2]]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(open_rgb(path))


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_is_applied(tmp_path, photos, orientation):
    for i, upright in enumerate(photos):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        stored = tmp_path / f"{i}.png"
        upright.transpose(STORED_AS[orientation]).save(stored, exif=exif)
        assert np.array_equal(pixels(stored), np.asarray(upright))
        np.testing.assert_array_equal(preprocess(stored, SPEC), preprocess_image(upright, tmp_path))


def preprocess_image(image: Image.Image, folder: Path) -> np.ndarray:
    path = folder / "reference.png"
    image.save(path)
    return preprocess(path, SPEC)


def test_a_rotated_phone_jpeg_preprocesses_like_the_upright_one(tmp_path, photos):
    upright, exif = photos[0], Image.Exif()
    exif[ORIENTATION] = 6  # the camera was held in portrait: stored sideways
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright.transpose(STORED_AS[6]).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    a, b = preprocess(tmp_path / "phone.jpg", SPEC), preprocess(tmp_path / "upright.jpg", SPEC)
    assert np.abs(a - b).mean() < 0.02  # JPEG rounding only: the sideways picture is ~1 away


def sixteen_bit_versions(folder: Path, upright: Image.Image) -> tuple[Path, dict[str, Path]]:
    """The 8-bit grey picture and the same picture in every 16-bit form (values × 257: exact in 8 bits)."""
    grey = upright.convert("L")
    grey.save(folder / "grey8.png")
    wide = np.asarray(grey).astype(np.uint16) * 257
    rgb = np.asarray(grey.convert("RGB")).astype(">u2") * 257
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 65535, ">u2")], axis=2)
    made = {"I;16 PNG": folder / "grey16.png", "I;16B TIFF": folder / "grey16b.tif"}
    Image.fromarray(wide).save(made["I;16 PNG"])
    Image.fromarray(wide.astype(">u2")).save(made["I;16B TIFF"])
    h, w = wide.shape
    made["RGB 16-bit PNG"] = write_png(folder / "rgb16.png", w, h, 16, 2, (r.tobytes() for r in rgb))
    made["RGBA 16-bit PNG"] = write_png(folder / "rgba16.png", w, h, 16, 6, (r.tobytes() for r in rgba))
    return folder / "grey8.png", made


def test_16_bit_images_are_scaled_not_clipped(tmp_path, photos):
    for upright in photos:
        eight, sixteen = sixteen_bit_versions(tmp_path, upright)
        for form, path in sixteen.items():
            assert Image.open(path).mode in {"I;16", "I;16B", "RGB", "RGBA"}, form
            assert np.array_equal(pixels(path), pixels(eight)), form
            np.testing.assert_array_equal(preprocess(path, SPEC), preprocess(eight, SPEC))


def test_16_bit_values_keep_their_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 0x12FF, 0x8000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "ramp.png")
    assert pixels(tmp_path / "ramp.png")[0, :, 0].tolist() == [0, 0, 1, 0x12, 0x80, 255]


@pytest.mark.parametrize("size", [(20000, 2), (2, 20000), (21 * 50, 50)])
def test_extreme_aspect_ratios_are_refused(tmp_path, size):
    path = tmp_path / "thin.png"
    Image.new("L", size).save(path)
    with pytest.raises(FakeGradientError, match=rf"thin.png is refused: {size[0]}x{size[1]} is more elongated "
                                                rf"than 1:{MAX_ASPECT_RATIO}"):
        open_rgb(path)


def test_the_size_is_checked_from_the_header_before_decoding(tmp_path):
    header_only = write_png(tmp_path / "header.png", 20000, 2, 8, 0, None)
    assert header_only.stat().st_size < 100
    with pytest.raises(FakeGradientError, match="is refused: 20000x2"):  # not "not a readable image"
        open_rgb(header_only)
    with pytest.raises(FakeGradientError, match="is not a readable image"):  # what decoding it gives
        open_rgb(write_png(tmp_path / "square.png", 20, 20, 8, 0, None))
    with pytest.raises(FakeGradientError, match="is refused"):
        open_rgb(write_png(tmp_path / "huge.png", 60000, 60000, 8, 0, None))


def test_the_widest_accepted_shape_still_works(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (MAX_ASPECT_RATIO * 12, 12), (10, 20, 30)).save(path)
    assert preprocess(path, SPEC).shape == (3, 224, 224)


@pytest.mark.parametrize("side", [10000, 14000])  # over Pillow's limit: its warning, then its error
def test_decompression_bombs_are_refused_quickly(tmp_path, side):
    bomb = write_png(tmp_path / "bomb.png", side, side, 1, 0, (bytes(side // 8) for _ in range(side)))
    assert bomb.stat().st_size < 100_000 and side * side > Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(FakeGradientError, match="bomb.png is refused: .*pixels"):
        open_rgb(bomb)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
                                     b"\xff\xd8\xff\xe0" + b"\0" * 100])
def test_unreadable_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(FakeGradientError, match="bad.jpg is not a readable image"):
        open_rgb(path)


def test_a_truncated_photo_is_a_one_line_error(tmp_path):
    data = foolbox_imagenet()[0].path.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FakeGradientError, match="cut.jpg is not a readable image"):
        open_rgb(path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os
    import threading

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_rgb(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # blocked in open(): release it so the test ends, then fail
        with open(fifo, "wb"):
            pass
        reader.join(timeout=30)
        pytest.fail("open_rgb blocked on a FIFO")
    assert isinstance(outcome[0], FakeGradientError)
    assert str(outcome[0]) == f"{fifo} is not a regular file (a folder, a pipe or a device)"


@pytest.mark.parametrize("dtype, kind", [(np.int32, "integer"), (np.float32, "floating-point")])
@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_32_bit_tiffs_are_refused_not_misread(tmp_path, dtype, kind, compression):
    """No scale of 32-bit samples to 8 bits is standard: 0..255 stored as int32 would read black if taken as 16-bit,
    0..1 floats would read black if taken as 0..255. Both are refused, from the header."""
    path = tmp_path / "deep.tif"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(dtype)).save(path, compression=compression)
    with pytest.raises(FakeGradientError, match=rf"deep.tif is refused: it holds 32-bit {kind} samples \(mode "
                                                r"[FI]\), which have no standard 8-bit scale"):
        open_rgb(path)


def test_a_16_bit_pgm_is_still_read_as_16_bit(tmp_path):
    path = tmp_path / "grey.pgm"
    path.write_bytes(b"P5 3 1 65535\n" + np.array([0, 0x1234, 0xFFFF], ">u2").tobytes())
    assert Image.open(path).mode == "I"
    assert pixels(path)[0, :, 0].tolist() == [0, 0x12, 0xFF]


def test_a_tiny_png_declaring_9000x9000_is_refused_before_decoding(tmp_path):
    """81 megapixels (under Pillow's own 89 M limit) would decode to hundreds of MB: over the decoded budget."""
    side = 9000
    bomb = write_png(tmp_path / "big.png", side, side, 1, 0, (bytes(side // 8 + 1) for _ in range(side)))
    assert bomb.stat().st_size < 20_000 and side * side > MAX_PIXELS
    with pytest.raises(FakeGradientError, match=f"big.png is refused: 9000x9000 pixels exceed the limit of {MAX_PIXELS}"):
        open_rgb(bomb)
    at_limit = write_png(tmp_path / "ok.png", 7000, 7000, 1, 0, None)  # 49 MP: within budget, decoding is tried
    with pytest.raises(FakeGradientError, match="ok.png is not a readable image"):
        open_rgb(at_limit)


def half_transparent(path: Path) -> np.ndarray:
    """A random RGBA PNG whose alpha covers 0 (transparent), 255 (opaque) and everything between; its pixels."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (16, 24, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_transparency_is_composited_on_black(tmp_path):
    """round(c * alpha / 255) per channel: what the device page computes from the browser's canvas (which zeroes
    colours under alpha 0), so a half-transparent PNG preprocesses alike in Python and in the page."""
    rgba = half_transparent(tmp_path / "logo.png")
    expected = np.floor(rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255 + 0.5).astype(np.uint8)
    got = pixels(tmp_path / "logo.png")
    np.testing.assert_array_equal(got, expected)
    assert (got[0] == 0).all() and np.array_equal(got[1], rgba[1, :, :3])

    grey = Image.fromarray(rgba[..., 0], "L")  # palette + tRNS and grey + alpha: the same rule
    grey_alpha = Image.merge("LA", [grey, Image.fromarray(rgba[..., 3], "L")])
    grey_alpha.save(tmp_path / "la.png")
    expected_grey = np.floor(rgba[..., 0].astype(np.float64) * rgba[..., 3] / 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(pixels(tmp_path / "la.png")[..., 1], expected_grey)
    palette = Image.fromarray(rgba[..., :3]).quantize(8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    index = np.asarray(Image.open(tmp_path / "p.png"))
    assert (pixels(tmp_path / "p.png")[index == 0] == 0).all() and (index == 0).any()
