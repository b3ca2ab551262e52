"""Masks <-> polygons in COCO pixel-corner coordinates (pixel (x, y) covers [x, x+1) x [y, y+1)).

``mask_to_polygons`` traces pixel edges, not pixel centres: polygons through boundary pixel centres (plain
``findContours``) lose half a pixel all round, which costs small regions most of their IoU. Tracing the
mask upsampled 2x and mapping contour points ``u -> (u + 1) // 2`` lands every vertex on a pixel corner,
so pycocotools rasterises the polygon back to the identical mask.

COCO, Label Studio and CVAT polygons cannot carry holes, so each hole is spliced into its outer ring by a
zero-width bridge (there and back along the same segment). Both even-odd and non-zero fill rules leave the
hole empty: the bridge's two traversals cancel and holes run opposite to their outer ring.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_utils


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0, min_iou: float = 0.95) -> list[list[float]]:
    """One flat ``[x0, y0, x1, y1, ...]`` ring per 8-connected component, holes bridged in.

    With ``tolerance`` 0 the polygons reproduce the mask exactly. ``tolerance`` > 0 simplifies rings
    (Douglas-Peucker, in pixels) for lighter review polygons; rings that collapse below 3 points are
    dropped, and the tolerance is halved until the polygons rasterise back with IoU >= ``min_iou``
    (thin regions lose the most), falling back to exact polygons.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not mask.any():
        return []
    while tolerance >= 0.25:
        polygons = _trace(mask, tolerance)
        back = polygons_to_mask(polygons, *mask.shape)
        if np.count_nonzero(back & mask) >= min_iou * np.count_nonzero(back | mask):
            return polygons
        tolerance /= 2
    return _trace(mask, 0.0)


def _trace(mask: np.ndarray, tolerance: float) -> list[list[float]]:
    up = np.pad(np.repeat(np.repeat((mask != 0).astype(np.uint8), 2, axis=0), 2, axis=1), 1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    rings = [_simplify(c.reshape(-1, 2) // 2, tolerance) for c in contours]  # the pad offset is the +1
    parents = hierarchy[0][:, 3]
    polygons = []
    for i, ring in enumerate(rings):
        if parents[i] != -1 or ring is None:
            continue
        holes = [rings[j] for j in np.flatnonzero(parents == i) if rings[j] is not None]
        polygons.append(_bridge(ring, holes).astype(float).ravel().tolist())
    return polygons


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Drop repeated and collinear vertices (and more with a tolerance); None when fewer than 3 remain."""
    if tolerance > 0:
        points = cv2.approxPolyDP(points.reshape(-1, 1, 2).astype(np.int32), tolerance, True).reshape(-1, 2)
    points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
    if len(points) >= 3:
        prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
        cross = (points[:, 0] - prev[:, 0]) * (nxt[:, 1] - points[:, 1]) - (points[:, 1] - prev[:, 1]) * (
            nxt[:, 0] - points[:, 0]
        )
        points = points[cross != 0]
    return points if len(points) >= 3 else None


def _bridge(outer: np.ndarray, holes: Sequence[np.ndarray]) -> np.ndarray:
    """Splice each hole into the ring at the ring vertex nearest the hole's first vertex."""
    ring = outer
    for hole in holes:
        k = int(np.argmin(((ring - hole[0]) ** 2).sum(axis=1)))
        ring = np.concatenate([ring[: k + 1], hole, hole[:1], ring[k:]])
    return ring


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Union of flat polygons rasterised by pycocotools; polygons with fewer than 3 points are skipped, and a
    point that is not a finite number raises ``ValueError``.

    Each polygon goes through ``frPyObjects`` on its own: given a list, pycocotools reads it as boxes when
    the first entry has 4 numbers, and a bridged polygon must keep its own even-odd fill.
    """
    out = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        if len(poly) < 6:
            continue
        xy = [float(v) for v in poly]
        if not np.isfinite(xy).all():  # pycocotools paints NaN / inf points as nothing, silently
            raise ValueError("polygon points must be finite numbers")
        rle = mask_utils.frPyObjects([xy], height, width)
        out |= mask_utils.decode(rle)[:, :, 0].astype(bool)
    return out
