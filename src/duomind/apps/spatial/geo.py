"""Coordinates: automatic UTM zones for metric work, 8-way bearings and geodesic distances (WGS84).

pyproj's network access is switched off here: nothing is ever fetched at run time (no PROJ grids).
"""

from __future__ import annotations

import numpy as np
import pyproj
import shapely

pyproj.network.set_network_enabled(False)  # no grid downloads, ever

WGS84 = pyproj.CRS.from_epsg(4326)
GEOD = pyproj.Geod(ellps="WGS84")
BEARINGS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
OPPOSITE = {b: BEARINGS[(i + 4) % 8] for i, b in enumerate(BEARINGS)}


def utm_crs(lon: float, lat: float) -> pyproj.CRS:
    """The WGS84 / UTM zone CRS containing (lon, lat): metric work stays within ~0.1% of true lengths."""
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"({lon}, {lat}) is not a longitude/latitude; give the data's CRS with --crs EPSG:XXXX.")
    zone = min(60, int((lon + 180) // 6) + 1)
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def parse_crs(crs: str | int | pyproj.CRS | None) -> pyproj.CRS | None:
    """A pyproj CRS from 'EPSG:3857', 3857, WKT or an OGC URN; None stays None."""
    if crs is None or isinstance(crs, pyproj.CRS):
        return crs
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as err:
        raise ValueError(f"unknown CRS {crs!r} ({err}); give it as EPSG:XXXX.") from err


def transform(geoms: np.ndarray, src: pyproj.CRS, dst: pyproj.CRS) -> np.ndarray:
    """Reproject an array of shapely geometries (vectorised over all their coordinates)."""
    if src == dst:
        return geoms
    tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, fn)


def transform_xy(x: np.ndarray, y: np.ndarray, src: pyproj.CRS, dst: pyproj.CRS) -> tuple[np.ndarray, np.ndarray]:
    """Reproject coordinate arrays."""
    if src == dst:
        return np.asarray(x, float), np.asarray(y, float)
    tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    return tr.transform(np.asarray(x, float), np.asarray(y, float))


def geodesic_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Geodesic distance in metres on the WGS84 ellipsoid (vectorised; symmetric)."""
    _, _, dist = GEOD.inv(np.asarray(lon1, float), np.asarray(lat1, float), np.asarray(lon2, float),
                          np.asarray(lat2, float))
    return np.asarray(dist)


def bearing_index(lon1, lat1, lon2, lat2) -> np.ndarray:
    """8-way bearing index (0 = N, 1 = NE, ...) of point 2 as seen from point 1.

    Uses a local tangent plane scaled by the cosine of the MEAN latitude of the two points, so swapping
    the points negates both components and the bearing flips exactly to its opposite (city scale: within a
    fraction of a degree of the geodesic azimuth).
    """
    lon1, lat1, lon2, lat2 = (np.asarray(a, float) for a in (lon1, lat1, lon2, lat2))
    dx = (lon2 - lon1) * np.cos(np.radians((lat1 + lat2) / 2))
    dy = lat2 - lat1
    angle = np.degrees(np.arctan2(dx, dy)) % 360.0
    return (np.floor((angle + 22.5) / 45.0).astype(int)) % 8


def bearing8(lon1, lat1, lon2, lat2) -> str:
    """The 8-way compass direction ("N", "NE", ..., "NW") of point 2 as seen from point 1."""
    return BEARINGS[int(bearing_index(lon1, lat1, lon2, lat2))]


def geodesic_area_m2(geom) -> float:
    """Geodesic area of a lon/lat polygon in square metres."""
    area, _ = GEOD.geometry_area_perimeter(geom)
    return abs(area)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D affine map from control points (SpatialLLM aligns cloud and map this way).

    Args:
        src: (N, 2) control points in the point cloud's frame.
        dst: (N, 2) the same points in the map's metric CRS.

    Returns:
        (3, 2) matrix M with [x, y, 1] @ M = mapped (x, y).
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 3:
        raise ValueError(f"control points need matching (N, 2) arrays with N >= 3; got {src.shape} and {dst.shape}.")
    a = np.column_stack([src, np.ones(len(src))])  # (N, 3)
    m, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return m
