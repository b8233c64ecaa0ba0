"""Decoding and transforming single images: formats, modes, EXIF, alpha, geometry, bad files."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from ganlib.data.imaging import ImageSkipped, ImageSpec, convert_array, decode_file, process_files

RGB = ImageSpec(32, "rgb")
GRAY = ImageSpec(32, "grayscale")


@pytest.mark.parametrize(("suffix", "kwargs"), [
    (".png", {}), (".bmp", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"}),
    (".webp", {"lossless": True}),
])
def test_lossless_formats_survive_exactly_when_no_resize_is_needed(tmp_path, make, suffix, kwargs):
    array = make.pattern(32, 32, 3, 1)
    path = make.save(array, tmp_path / f"a{suffix}", **kwargs)
    out, upscaled = decode_file(str(path), RGB)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and not upscaled
    assert np.array_equal(out, array)


def test_grayscale_png_and_jpeg(tmp_path, make):
    gray = make.pattern(32, 32, 1, 2)
    out, _ = decode_file(str(make.save(gray, tmp_path / "g.png")), GRAY)
    assert out.shape == (32, 32, 1) and np.array_equal(out, gray)
    jpeg = make.save(gray, tmp_path / "g.jpg", quality=90)
    out, _ = decode_file(str(jpeg), GRAY)
    assert np.array_equal(out[:, :, 0], np.asarray(Image.open(jpeg)))  # what Pillow decodes, unchanged
    rgb, _ = decode_file(str(jpeg), RGB)  # gray to RGB replicates the channel
    assert (rgb == out).all()


def test_gif_takes_the_first_frame_and_palettes_convert(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    out, _ = decode_file(str(path), RGB)
    assert (out == [255, 0, 0]).all()


def test_rgba_and_transparent_palette_composite_on_the_chosen_background(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16] = (10, 20, 30, 255)  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    white, _ = decode_file(str(tmp_path / "a.png"), ImageSpec(32, "rgb", "white"))
    black, _ = decode_file(str(tmp_path / "a.png"), ImageSpec(32, "rgb", "black"))
    assert (white[:16] == (10, 20, 30)).all() and (black[:16] == (10, 20, 30)).all()
    assert (white[16:] == 255).all() and (black[16:] == 0).all()
    half = rgba.copy()
    half[:, :, 3] = 128
    Image.fromarray(half, "RGBA").save(tmp_path / "half.png")
    out, _ = decode_file(str(tmp_path / "half.png"), ImageSpec(32, "rgb", "black"))
    assert abs(int(out[0, 0, 2]) - 30 * 128 // 255) <= 1
    # a palette image whose index 0 is transparent
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 255, 0] + [200, 0, 0] * 255)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    out, _ = decode_file(str(tmp_path / "p.png"), ImageSpec(32, "rgb", "black"))
    assert (out == 0).all()
    la = Image.fromarray(rgba[:, :, [0, 3]], "LA")
    la.save(tmp_path / "la.png")
    out, _ = decode_file(str(tmp_path / "la.png"), ImageSpec(32, "grayscale", "white"))
    assert (out[:16] == 10).all() and (out[16:] == 255).all()


def test_16_bit_one_bit_and_cmyk_convert(tmp_path):
    wide = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)
    wide[0, 0], wide[0, 1] = 65535, 257 * 100
    Image.fromarray(wide).save(tmp_path / "w.png")
    Image.fromarray(wide).save(tmp_path / "w.tif")
    for name in ("w.png", "w.tif"):
        out, _ = decode_file(str(tmp_path / name), GRAY)
        assert out[0, 0, 0] == 255 and out[0, 1, 0] == 100
        assert np.array_equal(out[:, :, 0], np.rint(wide / 257.0).astype(np.uint8))
    Image.new("1", (32, 32), 1).save(tmp_path / "b.png")
    assert (decode_file(str(tmp_path / "b.png"), GRAY)[0] == 255).all()
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert (decode_file(str(tmp_path / "c.jpg"), RGB)[0] >= 250).all()  # no ink: white
    assert (decode_file(str(tmp_path / "c.tif"), RGB)[0] == (255, 0, 0)).all()  # magenta + yellow: red


def test_exif_orientation_is_applied(tmp_path, make):
    array = make.pattern(32, 48, 3, 3)  # 48 wide, 32 high
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out, _ = decode_file(str(tmp_path / "o.jpg"), ImageSpec(32, "rgb"))
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "o.jpg"))
    assert upright.size == (32, 48)  # displayed portrait
    expected = np.asarray(upright)[8:40]  # the centred 32x32 square of the upright image
    assert np.array_equal(out, expected)


def test_geometry_centre_square_and_resize(tmp_path, make):
    wide = make.pattern(32, 40, 3, 4)  # shorter side already 32: cropped, not resampled
    out, up = decode_file(str(make.save(wide, tmp_path / "w.png")), RGB)
    assert np.array_equal(out, wide[:, 4:36]) and not up
    big = make.pattern(60, 80, 3, 5)
    out, up = decode_file(str(make.save(big, tmp_path / "b.png")), RGB)
    expected = Image.fromarray(big).resize((32, 32), Image.Resampling.LANCZOS, box=(10, 0, 70, 60))
    assert np.array_equal(out, np.asarray(expected)) and not up
    small = make.pattern(20, 20, 3, 6)
    out, up = decode_file(str(make.save(small, tmp_path / "s.png")), RGB)
    assert out.shape == (32, 32, 3) and up


def test_large_jpeg_decodes_through_draft_close_to_a_full_decode(tmp_path, make):
    big = np.repeat(np.repeat(make.pattern(64, 64, 3, 7), 8, axis=0), 8, axis=1)  # 512 x 512, smooth
    path = make.save(big, tmp_path / "big.jpg", quality=95)
    out, _ = decode_file(str(path), RGB)
    full = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS))
    assert np.abs(out.astype(int) - full).mean() < 4


def test_bad_files_are_skipped_with_a_reason(tmp_path, make):
    good = make.save(make.pattern(32, 32, 3, 8), tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n")
    raw = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(raw[: len(raw) // 2])
    jpeg = make.save(make.pattern(32, 32, 3, 9), tmp_path / "j.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    corrupt = bytearray(raw)
    corrupt[60:80] = b"\xff" * 20  # inside the image data: checksum error
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    for name, reason in [("empty.png", "not a readable image"), ("text.jpg", "not a readable image"),
                         ("truncated.png", "(?i)truncated"), ("truncated.jpg", "(?i)truncated"),
                         ("corrupt.png", "broken data stream")]:
        with pytest.raises(ImageSkipped, match=reason):
            decode_file(str(tmp_path / name), RGB)
    with pytest.raises(ImageSkipped, match="No such file"):
        decode_file(str(tmp_path / "gone.png"), RGB)
    result = process_files([str(good), str(tmp_path / "empty.png"), str(good)], RGB)
    assert result.ok.tolist() == [True, False, True] and result.images.shape == (2, 3, 32, 32)
    assert [i for i, _ in result.reasons] == [1]


def test_arrays_convert_like_images():
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    out, up = convert_array(gray, ImageSpec(28, "auto"))
    assert out is gray and not up  # nothing to do: the same pixels
    out, _ = convert_array(gray, ImageSpec(28, "rgb"))
    assert out.shape == (28, 28, 3) and (out == gray).all()
    rgba = np.zeros((28, 28, 4), np.uint8)
    out, _ = convert_array(rgba, ImageSpec(28, "auto", "white"))
    assert out.shape == (28, 28, 3) and (out == 255).all()
    out, up = convert_array(gray, ImageSpec(32, "auto"))
    assert out.shape == (32, 32, 1) and up


def test_images_above_the_decoding_budget_are_skipped_with_the_reason(tmp_path, monkeypatch):
    """Issue #22: 170-megapixel PNGs took 3.3 GB per worker before their resize; the budget bounds it."""
    import ganlib.data.imaging as imaging

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    monkeypatch.setattr(imaging, "MAX_DECODE_PIXELS", 1000)  # 40 x 30 = 1200 pixels
    with pytest.raises(ImageSkipped, match=r"^40x30 pixels is above the 0.001-megapixel decoding budget"):
        decode_file(str(path), ImageSpec(size=28, channels="rgb", background="white"))
    monkeypatch.setattr(imaging, "MAX_DECODE_PIXELS", 1200)
    array, upscaled = decode_file(str(path), ImageSpec(size=28, channels="rgb", background="white"))
    assert array.shape == (28, 28, 3) and not upscaled
