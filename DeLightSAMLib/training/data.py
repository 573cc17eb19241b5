"""Training and evaluation data: the paper's PNG folder layout, or folders of volumes with label maps.

The modality a dataset trains or evaluates is given to the training loop, never guessed from file names. Items are
``(image (H, W, 3) uint8, mask (H, W) bool, name)``; :func:`to_tensors` makes the network's tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from ..errors import DeLightSAMError, first_line
from ..filecheck import check_complete
from ..imageio import PLAIN_IMAGE_SUFFIXES as IMAGE_SUFFIXES
from ..imageio import VOLUME_SUFFIXES
from ..intensity import robust_window, to_rgb8
from ..transforms import ImageTransform


class DataError(DeLightSAMError):
    """A dataset problem the user can fix; the message names the file."""


def _read(path: Path) -> np.ndarray:
    check_complete(path)  # a cut-off NIfTI would otherwise train on zeros
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise DataError(f"cannot read {path}: {first_line(error)[:120]}") from error


def _binary(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.ndim == 3:  # an RGB(A) mask saved by an image editor: all channels must agree
        mask = mask[..., 0]
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(
            f"{path} is not a binary mask (values {shown}); save it with 0 for background and 1 or 255 for the object"
        )
    return mask > 0


class FolderDataset(torch.utils.data.Dataset):
    """The paper's layout: ``root/image_1024/NAME.png``, ``root/mask_1024/NAME.png`` and a split JSON
    (``{"train": [...], "valid": [...], "test": [...]}``, names with or without their extension)."""

    augments = False  # the same image every epoch: a frozen encoder's embeddings may be cached (loops.train)

    def __init__(self, root: str | Path, split: str, split_file: Optional[str | Path] = None) -> None:
        self.root = Path(root)
        images, masks = self.root / "image_1024", self.root / "mask_1024"
        for folder in (images, masks):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist; a dataset folder holds image_1024/ and mask_1024/")
        split_path, splits = self.read_splits(self.root, split_file)
        if split not in splits:
            raise DataError(f"{split_path} has no '{split}' list (it has: {', '.join(splits)})")
        self.items = []
        for name in splits[split]:
            image = self._match(images, name)
            mask = self._match(masks, name, required_for=image)
            self.items.append((image, mask))
        if not self.items:
            raise DataError(f"the '{split}' list of {split_path} is empty")

    @staticmethod
    def read_splits(root: Path, split_file: Optional[str | Path]) -> tuple[Path, dict]:
        """The split file (given, or the one .json in ``root``) and its contents."""
        if split_file:
            path = Path(split_file)
        else:
            candidates = sorted(Path(root).glob("*.json"))
            if len(candidates) != 1:
                raise DataError(f"give the split file with --split-file: {root} has {len(candidates)} .json files")
            path = candidates[0]
        try:
            return path, json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read the split file {path} ({error})") from error

    @staticmethod
    def _match(folder: Path, name: str, required_for: Optional[Path] = None) -> Path:
        stem = Path(name).name
        for candidate in [folder / stem] + [folder / (Path(stem).stem + suffix) for suffix in IMAGE_SUFFIXES]:
            if candidate.is_file():
                return candidate
        what = f"the mask for {required_for}" if required_for else f"image '{name}'"
        raise DataError(f"{what} is missing: looked for {folder / Path(stem).stem}.* ")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, mask_path = self.items[index]
        image, mask = _read(image_path), _binary(_read(mask_path), mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; masks must match their images"
            )
        return to_rgb8(image), mask, image_path.stem


class VolumeSliceDataset(torch.utils.data.Dataset):
    """2D slices of ``root/images/*`` volumes with label maps of the same name in ``root/labels/``.

    Slices are taken along image axis ``axis`` (0=i, 1=j, 2=k). Every slice with foreground is used, and as many
    background slices as there are foreground ones, evenly spread. ``label`` picks one label value (default:
    any non-zero label is foreground). Intensities go through each volume's robust window.
    """

    augments = False  # see FolderDataset.augments

    def __init__(
        self, root: str | Path, axis: int = 2, label: Optional[int] = None, names: Optional[Sequence[str]] = None
    ) -> None:
        self.root, self.axis, self.label = Path(root), axis, label
        images, labels = self.root / "images", self.root / "labels"
        for folder in (images, labels):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist; a volume dataset holds images/ and labels/")
        volumes = sorted(p for p in images.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
        if names is not None:
            volumes = [p for p in volumes if _stem(p) in set(names)]
        if not volumes:
            raise DataError(f"no volumes (.nii.gz, .nrrd, .mha, ...) in {images}")
        self.slices = []  # (volume index, slice index)
        self.volumes = []
        for path in volumes:
            label_path = next((p for p in labels.iterdir() if _stem(p) == _stem(path)), None)
            if label_path is None:
                raise DataError(f"the label map for {path} is missing: looked for {labels / _stem(path)}.*")
            image, labelmap = _read(path), _read(label_path)
            if image.shape[:3] != labelmap.shape[:3]:
                raise DataError(f"{label_path} has size {labelmap.shape[::-1]} but {path} has {image.shape[::-1]}")
            foreground = labelmap == label if label is not None else labelmap > 0
            self.volumes.append((path.name, image, foreground, robust_window(image)))
            numpy_axis = 2 - axis
            has = foreground.any(axis=tuple(a for a in range(3) if a != numpy_axis))
            with_fg, without = np.flatnonzero(has), np.flatnonzero(~has)
            keep = (
                without[np.linspace(0, len(without) - 1, min(len(with_fg), len(without))).astype(int)]
                if len(without)
                else without
            )
            self.slices += [(len(self.volumes) - 1, int(s)) for s in sorted(set(with_fg) | set(keep.tolist()))]

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int):
        volume, position = self.slices[index]
        name, image, foreground, window = self.volumes[volume]
        numpy_axis = 2 - self.axis
        section = np.take(image, position, axis=numpy_axis)
        return to_rgb8(section, window), np.take(foreground, position, axis=numpy_axis), f"{name}#{position}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_not_all_empty(dataset) -> None:
    """Refuse a training set whose masks are all empty: there would be nothing to learn."""
    if not any(dataset[i][1].any() for i in range(len(dataset))):
        raise DataError(
            f"every mask in {getattr(dataset, 'root', 'the dataset')} is empty; check the mask folder or the label value"
        )


def to_tensors(batch, transform: ImageTransform, patch_grid: int):
    """Collate items into (images (B, 3, S, S) normalised, masks (B, 1, S, S) float, patch targets
    (B, 1, g, g): 1 where any mask pixel falls in the patch, names)."""
    images = torch.cat([transform.prepare(image) for image, _, _ in batch])
    size = transform.image_size
    masks = torch.cat(
        [
            F.interpolate(
                torch.from_numpy(mask.astype(np.float32))[None, None],
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )
            >= 0.5
            for _, mask, _ in batch
        ]
    ).float()
    patches = F.adaptive_max_pool2d(masks, patch_grid)
    return images, masks, patches, [name for _, _, name in batch]


def open_dataset(
    root: str | Path,
    split: str,
    *,
    split_file: Optional[str | Path] = None,
    axis: int = 2,
    label: Optional[int] = None,
    optional: bool = False,
):
    """A FolderDataset (``image_1024``/``mask_1024``) or VolumeSliceDataset (``images``/``labels``) for ``split``.

    For volumes the split file (optional) lists volume names per split; without one every volume is used.
    With ``optional``, a split the split file does not list (e.g. no 'valid') gives None instead of an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if (root / "image_1024").is_dir():
        if optional and split not in FolderDataset.read_splits(root, split_file)[1]:
            return None
        return FolderDataset(root, split, split_file)
    if (root / "images").is_dir():
        names = None
        if split_file:
            try:
                splits = json.loads(Path(split_file).read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise DataError(f"cannot read the split file {split_file} ({error})") from error
            if split not in splits:
                if optional:
                    return None
                raise DataError(f"{split_file} has no '{split}' list (it has: {', '.join(splits)})")
            names = [_stem(Path(name)) for name in splits[split]]
        return VolumeSliceDataset(root, axis=axis, label=label, names=names)
    raise DataError(f"{root} holds neither image_1024/ + mask_1024/ (2D images) nor images/ + labels/ (volumes)")
