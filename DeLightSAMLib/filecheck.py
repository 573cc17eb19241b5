"""Is an image file complete? The data its header announces against what the file holds.

SimpleITK reads a NIfTI file that was cut short (a broken download or copy), compressed or not, as if the missing
voxels were zeros, and its JPEG and BMP readers do the same for 2D images; the NRRD and MetaImage readers fail, with
messages that do not say why. :func:`check_complete` reads headers only and, for compressed data, inflates the
stream once without keeping it; it raises :class:`ImageError` naming the file when data is missing. Formats whose
readers refuse truncated files themselves (PNG, TIFF, DICOM) and unusual layouts pass unchecked.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional

from .errors import ImageError

_CHUNK = 1 << 20
_AGAIN = "it was probably cut off while downloading or copying: get the file again"

_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
}
_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),
}


def check_complete(path: Path) -> None:
    """Raise ImageError if the image file ``path`` holds less data than its header announces."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    checks = {
        ".nii": _check_nifti,
        ".hdr": _check_nifti,
        ".img": _check_nifti,
        ".mha": _check_metaimage,
        ".mhd": _check_metaimage,
        ".nrrd": _check_nrrd,
        ".nhdr": _check_nrrd,
        ".jpg": _check_jpeg,
        ".jpeg": _check_jpeg,
        ".bmp": _check_bmp,
    }
    check = checks.get(Path(name).suffix)
    if check is None:
        return
    try:
        check(path)
    except ImageError:
        raise
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as error:
        raise ImageError(f"cannot read {path} as an image ({type(error).__name__}: {error}); {_AGAIN}") from error


def _compare(path: Path, expected: int, start: int = 0, compressed: bool = False, skip: int = 0) -> None:
    """Raise if ``path`` from byte ``start`` (inflated when ``compressed``, then less ``skip`` bytes) is shorter
    than ``expected`` bytes."""
    if compressed:
        found = _inflated_size(path, start) - skip
    else:
        found = path.stat().st_size - start - skip
    if found < expected:
        raise ImageError(
            f"{path} is incomplete: its header announces {expected:,} bytes of image data but the file "
            f"holds {max(found, 0):,}; {_AGAIN}"
        )


def _inflated_size(path: Path, start: int) -> int:
    """Bytes a gzip or zlib stream from ``start`` inflates to (several gzip members too, as pigz and bgzip write);
    a stream that stops before its end marker is an error."""
    total, inflater, fed = 0, zlib.decompressobj(47), False  # 47: a gzip or zlib header, detected
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(_CHUNK)
        while data:
            total += len(inflater.decompress(data, _CHUNK * 16))  # bounded output: zeros inflate a thousandfold
            fed, data = True, inflater.unconsumed_tail
            if inflater.eof:  # then another member may follow; zero padding may too
                data = inflater.unused_data if inflater.unused_data.strip(b"\0") else b""
                inflater, fed = zlib.decompressobj(47), False
            if not data:
                data = handle.read(_CHUNK)
                if not fed and not data.strip(b"\0"):
                    data = b""  # padding after the last member
        if fed:
            total += len(inflater.flush())
            if not inflater.eof:
                raise ImageError(
                    f"the compressed data of {path} stops before its end ({total:,} bytes inflated); {_AGAIN}"
                )
    return total


def _check_nifti(path: Path) -> None:
    """NIfTI-1, NIfTI-2 and Analyze: sizes and bits per voxel from the header; the data from ``vox_offset`` of a
    .nii, or in the .img of a .hdr/.img pair."""
    single = _plain_suffix(path) == ".nii"
    header_path = path if single or _plain_suffix(path) == ".hdr" else _sibling(path, ".hdr")
    data_path = path if single or _plain_suffix(path) == ".img" else _sibling(path, ".img")
    if header_path is None or data_path is None:
        return  # the reader will say what is missing
    opener = gzip.open if header_path.name.lower().endswith(".gz") else open
    with opener(header_path, "rb") as handle:
        header = handle.read(540)
    for order in "<>":
        header_size = struct.unpack(order + "i", header[:4])[0]
        if header_size in (348, 540):
            break
    else:
        return  # not a NIfTI/Analyze header: the reader will say so
    if header_size == 348:
        dims = struct.unpack(order + "8h", header[40:56])
        bits = struct.unpack(order + "h", header[72:74])[0]
        offset = int(struct.unpack(order + "f", header[108:112])[0])
    else:
        bits = struct.unpack(order + "h", header[14:16])[0]
        dims = struct.unpack(order + "8q", header[16:80])
        offset = struct.unpack(order + "q", header[168:176])[0]
    if not 1 <= dims[0] <= 7 or bits <= 0:
        return
    voxels = 1
    for size in dims[1 : dims[0] + 1]:
        voxels *= max(int(size), 1)
    skip = max(offset, header_size) if single else max(offset, 0)
    _compare(data_path, voxels * bits // 8, compressed=data_path.name.lower().endswith(".gz"), skip=skip)


def _check_metaimage(path: Path) -> None:
    fields, header_bytes = _text_header(path, " = ", end_key="ElementDataFile")
    element = _MET_SIZES.get(fields.get("ElementType", ""))
    source = fields.get("ElementDataFile", "")
    header_size = int(fields.get("HeaderSize", "0"))
    if element is None or not source or source.startswith("LIST") or "%" in source or header_size < 0:
        return  # a file list, a pattern, data at the end of a file: left to the reader
    expected = element * int(fields.get("ElementNumberOfChannels", "1"))
    for size in fields.get("DimSize", "").split():
        expected *= int(size)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if source == "LOCAL":
        _compare(path, expected, start=header_bytes, compressed=compressed)
    else:
        _compare(path.parent / source, expected, start=0 if compressed else header_size, compressed=compressed)


def _check_nrrd(path: Path) -> None:
    fields, header_bytes = _text_header(path, ": ", end_key=None)
    element = _NRRD_SIZES.get(" ".join(fields.get("type", "").lower().split()))
    encoding = fields.get("encoding", "").lower()
    source = fields.get("data file", fields.get("datafile", "")).strip()
    skips = any(fields.get(key, "0").strip() != "0" for key in ("line skip", "lineskip", "byte skip", "byteskip"))
    if element is None or encoding not in ("raw", "gzip", "gz") or skips or source.startswith("LIST") or " " in source:
        return  # text or bzip2 encodings, skipped bytes, file lists: left to the reader
    expected = element
    for size in fields.get("sizes", "").split():
        expected *= int(size)
    compressed = encoding != "raw"
    if source:
        _compare(path.parent / source, expected, compressed=compressed)
    else:
        _compare(path, expected, start=header_bytes, compressed=compressed)


def _check_jpeg(path: Path) -> None:
    """A JPEG ends with an end-of-image marker after its last start-of-scan (0xFF in the coded data is stuffed, so
    neither marker can appear by chance; an embedded thumbnail's markers come before the main scan)."""
    data = path.read_bytes()
    if data.startswith(b"\xff\xd8") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageError(f"{path} is incomplete: its image data stops before the JPEG end-of-image marker; {_AGAIN}")


def _check_bmp(path: Path) -> None:
    with open(path, "rb") as handle:
        header = handle.read(34)
    if header[:2] != b"BM" or len(header) < 34:
        return
    offset = struct.unpack("<I", header[10:14])[0]
    width, height = struct.unpack("<ii", header[18:26])
    bits, compression = struct.unpack("<HI", header[28:34])
    if compression in (0, 3):  # uncompressed rows (BI_RGB, BI_BITFIELDS), each padded to 4 bytes
        _compare(path, ((abs(width) * bits + 31) // 32) * 4 * abs(height), start=offset)


def _text_header(path: Path, separator: str, end_key: Optional[str]) -> tuple[dict[str, str], int]:
    """``key<separator>value`` lines up to the line of ``end_key`` (MetaImage) or a blank line (NRRD), and the
    header's length in bytes."""
    fields, length = {}, 0
    with open(path, "rb") as handle:
        for raw in handle:
            length += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if end_key is None and not line.strip():
                break
            key, found, value = line.partition(separator)
            if found:
                fields[key.strip()] = value.strip()
            if key.strip() == end_key or length > 1 << 20:
                break
    return fields, length


def _plain_suffix(path: Path) -> str:
    name = path.name.lower()
    return Path(name[:-3] if name.endswith(".gz") else name).suffix


def _sibling(path: Path, suffix: str) -> Optional[Path]:
    """The other file of an Analyze/NIfTI pair (``.hdr`` and ``.img``, either possibly gzipped)."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    stem = name[: -len(Path(name).suffix)]
    for candidate in (stem + suffix, stem + suffix + ".gz", stem + suffix.upper(), stem + suffix.upper() + ".gz"):
        if (path.parent / candidate).is_file():
            return path.parent / candidate
    return None
