"""Image loading: every PIL mode becomes the right RGB image; every bad input gets its own error."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import image_processor, make_processor, sparsecut_config
from sparsecut.images import ImageLoadError, load_image


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    image.putpixel((1, 0), (0, 0, 0, 128))
    rgb = np.asarray(load_image(_png(image)))
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[3, 3]) == (255, 255, 255)  # fully transparent -> white, not the hidden red
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    assert all(abs(int(v) - 127) <= 1 for v in rgb[0, 1])  # half-transparent black over white


def test_greyscale_and_palette():
    grey = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, mode="L")
    rgb = np.asarray(load_image(_png(grey)))
    assert rgb.shape == (4, 4, 3) and (rgb[..., 0] == rgb[..., 2]).all() and rgb[3, 3, 0] == 240
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((2, 2), 1)
    rgb = np.asarray(load_image(_png(palette)))
    assert tuple(rgb[2, 2]) == (10, 200, 30) and tuple(rgb[0, 0]) == (0, 0, 0)
    palette.info["transparency"] = 0
    rgb = np.asarray(load_image(_png(palette, transparency=0)))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[2, 2]) == (10, 200, 30)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    rgb = np.asarray(load_image(_png(cmyk, format="JPEG", quality=100)))
    assert rgb.shape == (8, 8, 3)
    assert rgb[4, 4, 0] > 240 and rgb[4, 4, 1] < 15 and rgb[4, 4, 2] < 15


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    rgb = np.asarray(load_image(_png(image)))
    assert tuple(rgb[:, :, 0].ravel()) == (0, 4, 128, 255)  # /257, rounded


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (6, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))  # red at the top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    for fmt in ("PNG", "JPEG"):
        loaded = load_image(_png(image.resize((60, 20), Image.NEAREST), format=fmt, exif=exif.tobytes()))
        assert loaded.size == (20, 60)
        rgb = np.asarray(loaded)
        assert rgb[2, 17, 0] > 200 and rgb[2, 2, 0] < 60, fmt  # the red corner is now at the top-right


def test_paths_and_file_objects(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    assert load_image(path).size == (3, 3)
    assert load_image(str(path)).getpixel((0, 0)) == (1, 2, 3)
    with open(path, "rb") as handle:
        assert load_image(handle).size == (3, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("just some text, not an image"), "not an image"),
        (lambda p: p.write_bytes(_png(Image.new("RGB", (64, 64), (9, 9, 9)), format="JPEG")[:200]), "truncated or corrupt"),
        (lambda p: p.write_bytes(_png(Image.new("RGB", (64, 64)))[:-30]), "truncated or corrupt"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(ImageLoadError, match=message):
        load_image(path)


def test_decompression_bomb_is_refused():
    image = Image.new("1", (3000, 3000))  # compresses to almost nothing
    data = _png(image)
    assert len(data) < 10_000
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(data, max_pixels=1_000_000)
    assert load_image(data, max_pixels=None).size == (3000, 3000)


def test_wrong_type():
    with pytest.raises(ImageLoadError, match="Expected a PIL image"):
        load_image(12)


def test_processor_turns_every_mode_into_the_same_views():
    processor = make_processor(sparsecut_config())
    rgb = Image.new("RGB", (20, 20), (200, 100, 50))
    rgba = rgb.convert("RGBA")
    reference = processor.image_views(rgb)
    assert reference.shape == (5, 3, 16, 16)
    assert np.allclose(processor.image_views(_png(rgba)), reference)
    assert np.allclose(processor.image_views(rgb.convert("P", palette=Image.ADAPTIVE)), reference, atol=0.05)
    with pytest.raises(ImageLoadError, match="empty file"):
        processor(images=[b""], text=[processor.prompt("Hi")])
    assert image_processor().image_mean is not None
