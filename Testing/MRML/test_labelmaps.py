"""``Labelmaps.toModifierVoxels``: the fast paths give exactly the voxels of the rule they implement."""

from __future__ import annotations

import numpy as np
import pytest

from DeLightSAMSlicerLib.Labelmaps import toModifierVoxels


def ruleAsWritten(sourceIJK, values, sourceToModifier):
    """The rule spelled out: every modifier voxel in each source voxel's bounding box whose centre that source voxel
    holds (``floor(modifierToSource @ centre + 0.5)``); the first implementation, kept as the oracle."""
    sourceIJK = np.asarray(sourceIJK, np.int64).reshape(-1, 3)
    linear = sourceToModifier[:3, :3]
    modifierToSource = np.linalg.inv(sourceToModifier)
    centres = sourceIJK @ linear.T + sourceToModifier[:3, 3]
    halfSize = 0.5 * np.abs(linear).sum(axis=1)
    first = np.ceil(centres - halfSize - 1e-9).astype(np.int64)
    counts = np.floor(2 * halfSize + 1e-9).astype(np.int64) + 1
    offsets = np.stack(np.meshgrid(*[np.arange(n) for n in counts], indexing="ij"), axis=-1).reshape(-1, 3)
    candidates = (first[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    owners = np.floor(candidates @ modifierToSource[:3, :3].T + modifierToSource[:3, 3] + 0.5).astype(np.int64)
    keep = np.all(owners == np.repeat(sourceIJK, len(offsets), axis=0), axis=1)
    return candidates[keep], np.repeat(np.asarray(values), len(offsets))[keep]


def asSet(voxels, values):
    return {tuple(v) + (bool(x),) for v, x in zip(voxels.tolist(), np.asarray(values).tolist())}


def rotation(angles):
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


GEOMETRIES = {
    "same lattice": (np.eye(3), [0, 0, 0]),
    "same lattice, shifted": (np.eye(3), [3, -2, 5]),
    "axes permuted and flipped": (np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), [40, 0, -1]),
    "sheared, centres on centres": (np.array([[1, 1, 0], [0, 1, 0], [0, 0, -1]]), [2, 0, 7]),
    "oversampled 2x": (np.eye(3) * 2, [0.5, 0.5, 0.5]),
    "oversampled 3x, on ties": (np.eye(3) * 3, [0, 0, 0]),
    "coarser 2x, on ties": (np.eye(3) * 0.5, [0, 0, 0]),
    "coarser, anisotropic": (np.diag([0.5, 0.7, 0.25]), [0.25, 0.1, 0.0]),
    "rotated": (rotation([0.3, -0.2, 0.5]), [1.3, -0.7, 2.0]),
    "rotated, oversampled": (rotation([0.1, 0.7, -0.4]) * 1.7, [0.2, 0.4, -0.3]),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("layout", ["slice", "scattered"])
def test_modifier_voxels_equal_the_rule_as_written(name, layout):
    linear, offset = GEOMETRIES[name]
    sourceToModifier = np.eye(4)
    sourceToModifier[:3, :3], sourceToModifier[:3, 3] = linear, offset
    rng = np.random.default_rng(len(name))
    if layout == "slice":  # an aligned view: every voxel of one slice
        j, i = np.mgrid[0:37, 0:41]
        sourceIJK = np.stack([i.ravel(), j.ravel(), np.full(i.size, 4)], axis=1)
    else:  # an oblique view's digital plane, or any set of distinct voxels
        sourceIJK = np.unique(rng.integers(0, 30, size=(400, 3)), axis=0)
    values = rng.random(len(sourceIJK)) < 0.4
    voxels, inside = toModifierVoxels(sourceIJK, values, sourceToModifier)
    expected = asSet(*ruleAsWritten(sourceIJK, values, sourceToModifier))
    assert len(voxels) == len(expected)  # each modifier voxel at most once
    assert asSet(voxels, inside) == expected


def test_a_batch_is_cropped_to_the_modifier_extent():
    from DeLightSAMSlicerLib.Labelmaps import BatchLabelmap, ModifierGeometry

    batch = BatchLabelmap(ModifierGeometry(np.eye(4), (2, 5, 0, 3, 1, 1)))
    j, i = np.mgrid[0:6, 0:8]
    sourceIJK = np.stack([i.ravel(), j.ravel(), np.ones(i.size, int)], axis=1)
    batch.add(sourceIJK, (i.ravel() + j.ravel()) % 2 == 0, np.eye(4))
    extent, mask, covered = batch.arrays()
    assert extent == (2, 5, 0, 3, 1, 1) and covered.shape == (1, 4, 4) and covered.all()
    expected = ((np.arange(2, 6)[None, :] + np.arange(4)[:, None]) % 2 == 0).astype(np.uint8)
    assert np.array_equal(mask[0], expected)


def test_no_source_voxels_give_no_modifier_voxels():
    voxels, values = toModifierVoxels(np.empty((0, 3)), np.empty(0, bool), np.eye(4))
    assert voxels.shape == (0, 3) and values.shape == (0,)
