"""Reading and writing files: cut-off files are refused in every format whose reader would take them, complete ones
(compressed in one or several gzip members, attached or detached) are read, gray + alpha is gray, and outputs are
checked before any work and written together or not at all."""

from __future__ import annotations

import errno
import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from DeLightSAMLib.errors import ImageError
from DeLightSAMLib.imageio import array_writer, mask_writer, read_image, write_files

VOLUME = np.random.default_rng(0).integers(-1000, 1000, (6, 7, 9)).astype(np.int16)  # [k, j, i]

# (file written, compressed, the file that holds the data)
FORMATS = [
    ("v.nii.gz", True, "v.nii.gz"),
    ("v.nii", False, "v.nii"),
    ("v.nrrd", False, "v.nrrd"),
    ("v.nrrd", True, "v.nrrd"),
    ("v.nhdr", True, "v.raw.gz"),
    ("v.nhdr", False, "v.raw"),
    ("v.mha", False, "v.mha"),
    ("v.mha", True, "v.mha"),
    ("v.mhd", True, "v.zraw"),
    ("v.mhd", False, "v.raw"),
    ("v.hdr", False, "v.img"),
]


@pytest.mark.parametrize("name, compressed, data_file", FORMATS)
def test_complete_volumes_are_read_and_cut_off_ones_refused(tmp_path, name, compressed, data_file):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(VOLUME), str(path), compressed)
    np.testing.assert_array_equal(read_image(path).array, VOLUME)
    data = (tmp_path / data_file).read_bytes()
    for keep in (0.5, 0.97):
        (tmp_path / data_file).write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ImageError, match=r"(is incomplete|stops before its end).*get the file again"):
            read_image(path)


def test_gzip_in_several_members_and_zlib_streams_are_complete(tmp_path):
    """pigz and bgzip write several gzip members; each is inflated."""
    path = tmp_path / "v.nii"
    sitk.WriteImage(sitk.GetImageFromArray(VOLUME), str(path))
    raw = path.read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_image(tmp_path / "members.nii.gz").array, VOLUME)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:-10]))
    with pytest.raises(ImageError, match="is incomplete"):  # every member complete, the data short of the header's
        read_image(tmp_path / "short.nii.gz")
    assert zlib.decompress(zlib.compress(raw)) == raw


@pytest.mark.parametrize("name", ["photo.jpg", "photo.bmp"])
def test_cut_off_2d_images_are_refused(tmp_path, name):
    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    assert read_image(path).array.shape == (40, 50, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ImageError, match="is incomplete"):
        read_image(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_and_alpha_png_is_read_as_its_gray_channel(tmp_path, dtype):
    """SimpleITK cannot read two-channel PNGs; libpng writes them with every row filter, which are undone here."""
    rng = np.random.default_rng(2)
    gray = (rng.integers(0, 255, (37, 41)) * (257 if dtype == np.uint16 else 1)).astype(dtype)
    gray[:, :20] = np.arange(20, dtype=dtype)  # smooth parts make libpng choose the predicting filters
    alpha = np.full_like(gray, 200)
    path = tmp_path / "gray_alpha.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([gray, alpha], -1), isVector=True), str(path))
    loaded = read_image(path)
    assert loaded.is_2d and loaded.array.dtype == dtype
    np.testing.assert_array_equal(loaded.array, gray)


def test_png_decoder_matches_simpleitk_and_reads_interlaced_files(tmp_path):
    from DeLightSAMLib.png import read_png

    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 255, (29, 33, 4)).astype(np.uint8)
    rgba[10:20] = 7  # flat rows: sub, up, average and Paeth filters all get chosen somewhere
    for pixels in (rgba, rgba[..., :3], rgba[..., 0]):
        path = tmp_path / f"plain{pixels.ndim}{pixels.shape[-1]}.png"
        sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=pixels.ndim == 3), str(path))
        decoded = read_png(path)
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    gray_alpha = rgba[..., :2]
    _write_interlaced_png(tmp_path / "interlaced.png", gray_alpha)
    np.testing.assert_array_equal(read_png(tmp_path / "interlaced.png"), gray_alpha)


def _write_interlaced_png(path, pixels):
    """An Adam7-interlaced 8-bit gray + alpha PNG, rows unfiltered (SimpleITK writes no interlaced files)."""
    import struct

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    raw = b""
    for top, left, row_step, column_step in (
        (0, 0, 8, 8),
        (0, 4, 8, 8),
        (4, 0, 8, 4),
        (0, 2, 4, 4),
        (2, 0, 4, 2),
        (0, 1, 2, 2),
        (1, 0, 2, 1),
    ):
        part = pixels[top::row_step, left::column_step]
        if part.size:
            raw += b"".join(b"\0" + row.tobytes() for row in part)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 4, 0, 0, 1))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_outputs_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    logits = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    outputs = [(tmp_path / "m.png", mask_writer(mask, tmp_path / "m.png")), (tmp_path / "l.npy", array_writer(logits))]
    write_files(outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.npy", "m.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), logits)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.png"))), mask * 255)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "second"
    out.mkdir()
    monkeypatch.setattr(np, "save", disk_full)  # the mask is written first, then the logits fail
    with pytest.raises(ImageError, match=r"cannot write .*l.npy \(No space left on device\); nothing was written"):
        write_files([(out / "m.png", mask_writer(mask, out / "m.png")), (out / "l.npy", array_writer(logits))])
    assert list(out.iterdir()) == []
