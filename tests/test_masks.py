"""Segmentation masks from prototypes: the geometry (letterbox undone per axis, cell centres) on a mask with a
known edge, the crop to the box, and the polygon."""

from __future__ import annotations

import numpy as np
import pytest

from engines.adapters.base import fit_into
from engines.adapters.masks import box_mask, mask_polygon

INPUT = (320, 320)


def ramp_protos(edge_x: float, mh: int = 80, mw: int = 80) -> np.ndarray:
    """One prototype equal to (input x - edge_x) at each cell's centre: the mask is exactly input x > edge_x
    (bilinear sampling of a linear function is exact)."""
    centres = (np.arange(mw) + 0.5) * INPUT[1] / mw
    return np.broadcast_to(centres - edge_x, (mh, mw))[None].astype(np.float32)


@pytest.mark.parametrize("src_hw", [(512, 512), (300, 451), (144, 176), (720, 1280)])
def test_box_mask_when_edge_is_known_then_it_lands_on_the_source_pixel(src_hw):
    _, _, fit = fit_into(src_hw, INPUT, center=True)
    edge_in = 150.3
    box = np.array([100, fit.pad_y + 10, 220, fit.pad_y + 60], dtype=np.float32)
    mask, x0, y0 = box_mask(np.ones(1, np.float32), ramp_protos(edge_in), box, fit, INPUT)
    edge_src = (edge_in - fit.pad_x) / fit.sx
    cols = np.arange(x0, x0 + mask.shape[1]) + 0.5  # source pixel centres
    row = mask[mask.shape[0] // 2].astype(bool)
    inside = (cols >= (box[0] - fit.pad_x) / fit.sx) & (cols <= (box[2] - fit.pad_x) / fit.sx)
    np.testing.assert_array_equal(row[inside], cols[inside] > edge_src)
    assert not row[~inside].any()  # nothing outside the box


def test_mask_polygon_when_mask_is_a_band_then_its_outline_in_source_pixels():
    _, _, fit = fit_into((512, 512), INPUT, center=True)  # scale 0.625
    box = np.array([100, 100, 200, 180], dtype=np.float32)  # source 160..320 x 160..288
    poly = np.array(mask_polygon(np.ones(1, np.float32), ramp_protos(150.0), box, fit, INPUT))
    assert poly[:, 0].min() == pytest.approx(240, abs=1) and poly[:, 0].max() == pytest.approx(319, abs=1)
    assert poly[:, 1].min() == pytest.approx(160, abs=1) and poly[:, 1].max() == pytest.approx(287, abs=1)
    assert mask_polygon(-np.ones(1, np.float32), ramp_protos(400.0) * -1, box, fit, INPUT) == ()  # empty
