"""The structured scene description (SSD) of SpatialLLM (arXiv 2505.12703), as JSON.

Steps (`describe`):
1. Project every feature to the scene's UTM zone (metric work); centroids back to lon/lat.
2. Per feature: area (polygons), length and vertices (lines), bbox, center.
3. Heights of polygons from the point cloud: 95th minus 5th percentile of z of the points inside.
4. "3D Spatial" relations: up to `max_relations` nearest features (centroid to centroid, from a spatial
   index), each an 8-way bearing of the target seen from the feature and the geodesic distance.
5. Landmarks (the nearest POI and line with distances) and topology (roads, POIs, buildings within
   `topology_m` of the geometry); road lines list the roads they connect to; image captions attached to
   the features they show (`captions.py`).
6. Scene statistics an LLM cannot compute from a list: land-use shares, POI density per category, road
   length, intersections and connectivity of the road graph (networkx), green and water coverage.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import numpy as np
import shapely

from duomind.apps.spatial import geo
from duomind.apps.spatial.readers import Scene

ROADS = {"motorway", "trunk", "primary", "secondary", "tertiary", "residential", "service", "unclassified",
         "living_street", "pedestrian", "footway", "cycleway", "path", "track", "steps", "road", "highway",
         "motorway_link", "trunk_link", "primary_link", "secondary_link", "tertiary_link"}
GREEN = {"park", "grass", "forest", "wood", "garden", "meadow", "recreation_ground", "nature_reserve", "scrub",
         "village_green", "playground", "pitch", "golf_course", "heath", "grassland", "orchard"}
WATER = {"water", "lake", "pond", "reservoir", "river", "riverbank", "basin", "wetland", "canal", "stream"}
KIND_PREFIX = {"polygon": "A", "line": "L", "point": "P"}
SECTIONS = {"polygon": "polygons", "line": "lines", "point": "points"}


def kind_of(geom) -> str:
    t = geom.geom_type
    return "polygon" if "Polygon" in t else "line" if "LineString" in t else "point"


def landuse_group(fclass: str, kind: str) -> str:
    if fclass in GREEN:
        return "green"
    if fclass in WATER:
        return "water"
    if fclass == "building" or fclass in ("house", "apartments", "commercial", "industrial", "retail", "office"):
        return "built"
    return "other" if kind == "polygon" else kind


def _top_k(src: np.ndarray, dst: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Keep the k smallest-distance pairs per source (pairs sorted by source, then distance)."""
    order = np.lexsort((dst, dist, src))  # ties broken by target index: deterministic
    src, dst, dist = src[order], dst[order], dist[order]
    if len(src) == 0:
        return src, dst, dist
    starts = np.r_[0, np.flatnonzero(np.diff(src)) + 1]
    rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    keep = rank < k
    return src[keep], dst[keep], dist[keep]


def _groups(src: np.ndarray, n: int) -> list[slice]:
    """Slices into src (sorted) per index 0..n-1."""
    bounds = np.searchsorted(src, np.arange(n + 1))
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def _heights(metric: np.ndarray, poly_idx: np.ndarray, cloud: np.ndarray) -> dict[int, tuple[float, int]]:
    """Height (p95 - p5 of z) and point count of each polygon that holds cloud points."""
    tree = shapely.STRtree(metric[poly_idx])
    pts = shapely.points(cloud[:, 0], cloud[:, 1])
    pi, ti = tree.query(pts, predicate="intersects")
    if len(pi) == 0:
        return {}
    z = cloud[pi, 2]
    order = np.lexsort((z, ti))  # by polygon, then z: percentiles by index arithmetic, no per-polygon sort
    ti, z = ti[order], z[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ti)) + 1]
    counts = np.diff(np.r_[starts, len(ti)])

    def pct(q: float) -> np.ndarray:  # linear interpolation, as numpy's default percentile
        pos = starts + q * (counts - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, starts + counts - 1)
        return z[lo] + (z[hi] - z[lo]) * (pos - lo)

    h = pct(0.95) - pct(0.05)
    return {int(poly_idx[ti[s]]): (float(hv), int(c)) for s, hv, c in zip(starts, h, counts)}


def road_graph(road_metric: list) -> nx.Graph:
    """The noded road network: nodes at ends and crossings (0.1 m grid), edges weighted by length."""
    g = nx.Graph()
    if not road_metric:
        return g
    noded = shapely.get_parts(shapely.node(shapely.MultiLineString(
        [p for geom in road_metric for p in shapely.get_parts(geom)])))
    # each noded segment's first and last vertex on a 0.1 m grid, all at once
    first = np.round(shapely.get_coordinates(shapely.get_point(noded, 0)), 1).tolist()
    last = np.round(shapely.get_coordinates(shapely.get_point(noded, -1)), 1).tolist()
    g.add_edges_from((tuple(a), tuple(b), {"length": w}) for a, b, w in zip(first, last, shapely.length(noded).tolist())
                     if a != b)
    return g


def describe(scene: Scene, max_relations: int = 5, relation_radius_m: float = 400.0, topology_m: float = 50.0,
             landmark_m: float = 150.0, max_landmarks: int = 3, max_topology: int = 5,
             cloud_control: tuple[np.ndarray, np.ndarray] | None = None, workers: int = 1,
             captions: list[dict] | None = None, caption_m: float = 60.0) -> dict:
    """Build the SSD of a scene (see the module docstring for the steps).

    Args:
        scene: Features in lon/lat and an optional point cloud.
        max_relations: "3D Spatial" relations per feature (SpatialLLM uses up to 5).
        relation_radius_m: Farthest relation target considered.
        topology_m: Buffer for the topology lists (SpatialLLM: 50 m).
        landmark_m: Farthest landmark listed (the nearest POI and line to each area's or point's centroid).
        max_landmarks: Landmarks per feature (at most 2: one POI, one line).
        max_topology: Ids listed per topology category (the count is always exact).
        cloud_control: (cloud_xy, map_xy) control points to align the cloud to the map by an affine fit.
        workers: Threads for the independent stages (GEOS releases the GIL; 1 where other jobs share the cores).
        captions: Image caption records (`captions.read_captions`) to attach as `image_caption`.
        caption_m: Farthest a camera may stand from the feature its caption is attached to.

    Returns:
        {"crs", "polygons", "lines", "points", "stats"}; every feature has id, name, fclass, center,
        bbox and relations.
    """
    n = len(scene)
    if n == 0:
        raise ValueError("the scene has no features; read at least one non-empty vector file.")
    geoms = np.array(scene.geoms, dtype=object)
    kinds = np.array([kind_of(g) for g in geoms])
    center_ll = shapely.centroid(geoms)
    lon, lat = shapely.get_x(center_ll), shapely.get_y(center_ll)
    crs = geo.utm_crs(float(np.mean(lon)), float(np.mean(lat)))
    metric = geo.transform(geoms, geo.WGS84, crs)
    cx, cy = geo.transform_xy(lon, lat, geo.WGS84, crs)
    bounds = shapely.bounds(geoms)
    area = shapely.area(metric)
    length = shapely.length(metric)

    counters = {k: 0 for k in KIND_PREFIX}
    ids = []
    for k in kinds:
        counters[k] += 1
        ids.append(f"{KIND_PREFIX[k]}{counters[k]}")
    names = [nm or f"{fc} {i}" for nm, fc, i in zip(scene.names, scene.fclass, ids)]
    fclass = list(scene.fclass)
    is_road = np.array([k == "line" and fc in ROADS for k, fc in zip(kinds, fclass)])
    is_poi = kinds == "point"
    is_building = np.array([k == "polygon" and landuse_group(fc, k) == "built" for k, fc in zip(kinds, fclass)])

    # "3D Spatial" relations: nearest centroids from a spatial index
    cpts = shapely.points(cx, cy)
    tree = shapely.STRtree(cpts)
    x0, y0, x1, y1 = shapely.total_bounds(cpts)
    extent_m2 = max((x1 - x0) * (y1 - y0), 1.0)

    def stage_heights() -> dict[int, tuple[float, int]]:
        heights: dict[int, tuple[float, int]] = {}
        if scene.cloud is not None and len(scene.cloud):
            cloud = np.asarray(scene.cloud, float)
            if cloud_control is not None:
                m = geo.fit_affine(*cloud_control)
                cloud = np.column_stack([np.column_stack([cloud[:, :2], np.ones(len(cloud))]) @ m, cloud[:, 2]])
            elif scene.cloud_crs is not None and scene.cloud_crs != crs:
                x, y = geo.transform_xy(cloud[:, 0], cloud[:, 1], scene.cloud_crs, crs)
                cloud = np.column_stack([x, y, cloud[:, 2]])
            x0, y0, x1, y1 = shapely.total_bounds(metric)
            inside = (cloud[:, 0] >= x0) & (cloud[:, 0] <= x1) & (cloud[:, 1] >= y0) & (cloud[:, 1] <= y1)
            if not inside.any():
                raise ValueError(f"the point cloud ({len(cloud)} points) does not overlap the map's extent in {crs.name}; "
                                 "give its CRS with --cloud_crs or align it with control points (--control).")
            if inside.mean() < 0.5:
                warnings.warn(f"only {inside.mean():.0%} of the point cloud lies within the map; check its alignment",
                              stacklevel=2)
            poly_idx = np.flatnonzero(kinds == "polygon")
            if len(poly_idx):
                heights = _heights(metric, poly_idx, cloud[inside])

        return heights

    def stage_relations():
        # search radius sized for ~4x max_relations neighbours on average, so dense scenes stay linear in n
        radius = min(relation_radius_m, max(30.0, float(np.sqrt(extent_m2 * 4 * (max_relations + 1) / (np.pi * n)))))
        src, dst = tree.query(cpts, predicate="dwithin", distance=radius)
        keep = src != dst
        src, dst = src[keep], dst[keep]
        d_plane = np.hypot(cx[dst] - cx[src], cy[dst] - cy[src])
        rs, rd, _ = _top_k(src, dst, d_plane, max_relations)
        r_dist = geo.geodesic_m(lon[rs], lat[rs], lon[rd], lat[rd])
        r_bear = geo.bearing_index(lon[rs], lat[rs], lon[rd], lat[rd])
        rel_groups = _groups(rs, n)

        return rs, rd, r_dist, r_bear, rel_groups

    # landmarks: the nearest POI and the nearest line from each area's or point's centroid (point queries are
    # several times cheaper than polygon ones, and centroid distances match the relations')
    def stage_landmarks():
        lm_pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        srcs = np.flatnonzero(kinds != "line")
        line_idx = np.flatnonzero(kinds == "line")
        for tgt_geoms, tgt in ((metric[is_poi], np.flatnonzero(is_poi)), _segments(metric[line_idx], line_idx)):
            if len(tgt) and len(srcs):
                (a, b), d = shapely.STRtree(tgt_geoms).query_nearest(cpts[srcs], max_distance=landmark_m,
                                                                      return_distance=True, exclusive=True,
                                                                      all_matches=False)
                lm_pairs.append((srcs[a], tgt[b], d))
        ls = np.concatenate([p[0] for p in lm_pairs]) if lm_pairs else np.zeros(0, int)
        ld = np.concatenate([p[1] for p in lm_pairs]) if lm_pairs else np.zeros(0, int)
        l_dist = np.concatenate([p[2] for p in lm_pairs]) if lm_pairs else np.zeros(0)
        ls, ld, l_dist = _top_k(ls, ld, l_dist, max_landmarks)
        lm_groups = _groups(ls, n)

        return ld, l_dist, lm_groups

    # topology within topology_m
    def stage_topology():
        ts, td = shapely.STRtree(metric).query(metric, predicate="dwithin", distance=topology_m)
        keep = ts != td
        ts, td = ts[keep], td[keep]
        order = np.lexsort((td, ts))
        ts, td = ts[order], td[order]

        return ts, td

    # road connectivity between road lines (touching within 1 m)
    def stage_connects() -> dict[int, list[int]]:
        road_idx = np.flatnonzero(is_road)
        connects: dict[int, list[int]] = {int(i): [] for i in road_idx}
        if len(road_idx):
            rtree = shapely.STRtree(metric[road_idx])
            a, b = rtree.query(metric[road_idx], predicate="dwithin", distance=1.0)
            for i, j in zip(road_idx[a], road_idx[b]):
                if i != j:
                    connects[int(i)].append(int(j))

        return connects

    # the stages are independent and spend their time in GEOS, which releases the GIL: run them side by side
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = {name: pool.submit(fn) for name, fn in (('heights', stage_heights), ('relations', stage_relations),
                                                       ('landmarks', stage_landmarks), ('topology', stage_topology),
                                                       ('connects', stage_connects), ('roads', lambda: road_graph(list(metric[is_road]))))}
        heights = jobs['heights'].result()
        rs, rd, r_dist, r_bear, rel_groups = jobs['relations'].result()
        ld, l_dist, lm_groups = jobs['landmarks'].result()
        ts, td = jobs['topology'].result()
        connects = jobs['connects'].result()
        graph = jobs['roads'].result()

    shown, unmatched = {}, []
    if captions:
        from duomind.apps.spatial.captions import match

        shown, unmatched = match(captions, names, ids, kinds, metric, crs, max_m=caption_m)

    out: dict = {"crs": crs.to_string(), "polygons": [], "lines": [], "points": []}
    # round once, vectorised, then plain Python lists: the per-feature loop must stay cheap at 100k features
    lon_r, lat_r = np.round(lon, 6).tolist(), np.round(lat, 6).tolist()
    bounds_r = np.round(bounds, 6).tolist()
    area_r, length_r = np.round(area, 1).tolist(), np.round(length, 1).tolist()
    rel_t, rel_b = [ids[j] for j in rd.tolist()], [geo.BEARINGS[b] for b in r_bear.tolist()]
    rel_d = np.round(r_dist, 1).tolist()
    lm_t, lm_d = [ids[j] for j in ld.tolist()], np.round(l_dist, 1).tolist()
    # topology per category: the pairs (sorted by source, then target) split by the target's category, so the
    # loop only slices
    topo_parts = []
    for label, mask in (("roads", is_road), ("pois", is_poi), ("buildings", is_building)):
        sel = mask[td]
        topo_parts.append((label, _groups(ts[sel], n), [ids[j] for j in td[sel].tolist()]))
    kinds_l = kinds.tolist()
    for i in range(n):
        k = kinds_l[i]
        f = {"id": ids[i], "name": names[i], "fclass": fclass[i], "center": [lon_r[i], lat_r[i]],
             "bbox": bounds_r[i]}
        if k == "polygon":
            f["area_m2"] = area_r[i]
            hv = heights.get(i)
            f["height_m"] = round(hv[0], 1) if hv else None
            if hv:
                f["cloud_points"] = hv[1]
        elif k == "line":
            f["length_m"] = length_r[i]
            coords = np.round(_thin(shapely.get_coordinates(geoms[i]), 20), 6).tolist()
            f["nodes"] = coords
            if i in connects:
                f["connects"] = [ids[j] for j in sorted(set(connects[i]))]
        else:
            f["coordinates"] = f["center"]
        if i in shown:
            f["image_caption"] = shown[i]
        sl = rel_groups[i]
        f["relations"] = [{"target": rel_t[j], "bearing": rel_b[j], "distance_m": rel_d[j]}
                          for j in range(sl.start, sl.stop)]
        sl = lm_groups[i]
        if sl.stop > sl.start:
            f["landmarks"] = [{"target": lm_t[j], "distance_m": lm_d[j]} for j in range(sl.start, sl.stop)]
        topo = {}
        for label, groups, tids in topo_parts:
            sl = groups[i]
            if sl.stop > sl.start:
                topo[label] = {"count": int(sl.stop - sl.start), "ids": tids[sl.start:min(sl.stop, sl.start + max_topology)]}
        if topo:
            f["topology"] = topo
        out[SECTIONS[k]].append(f)
    out["stats"] = _stats(kinds, fclass, area, length, metric, is_road, is_poi, extent_m2, heights, graph)
    if captions:
        out["stats"]["image_captions"] = {"given": len(captions), "attached": len(captions) - len(unmatched),
                                          "features_with_captions": len(shown), "unmatched": len(unmatched)}
    return out


def _segments(lines: np.ndarray, idx: np.ndarray, step_m: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Lines cut into pieces of at most step_m, with the index of the line each piece came from.

    A long street's bounding box covers much of a city, which makes a spatial index over whole lines
    check every street for every query; short pieces keep nearest-line queries local.
    """
    if len(lines) == 0:
        return lines, idx
    coords, owner = shapely.get_coordinates(shapely.segmentize(lines, step_m), return_index=True)
    same = owner[1:] == owner[:-1]
    pieces = shapely.linestrings(np.stack([coords[:-1][same], coords[1:][same]], axis=1))  # (S, 2, 2)
    return pieces, idx[owner[:-1][same]]


def _thin(coords: np.ndarray, k: int) -> np.ndarray:
    if len(coords) <= k:
        return coords
    return coords[np.unique(np.linspace(0, len(coords) - 1, k).round().astype(int))]


def _stats(kinds, fclass, area, length, metric, is_road, is_poi, extent_m2, heights, g: nx.Graph) -> dict:
    """Scene statistics: land-use shares, POI density, road network, coverage."""
    km2 = extent_m2 / 1e6
    poly = kinds == "polygon"
    groups: dict[str, float] = {}
    classes: dict[str, float] = {}
    for i in np.flatnonzero(poly):
        grp = landuse_group(fclass[i], "polygon")
        groups[grp] = groups.get(grp, 0.0) + float(area[i])
        classes[fclass[i]] = classes.get(fclass[i], 0.0) + float(area[i])
    total = sum(groups.values()) or 1.0
    poi_counts: dict[str, int] = {}
    for i in np.flatnonzero(is_poi):
        poi_counts[fclass[i]] = poi_counts.get(fclass[i], 0) + 1
    roads = metric[is_road]
    deg = dict(g.degree())
    ends = [nd for nd, d in deg.items() if d == 1]
    touching = 0
    if ends:
        # an end that stops within 1 m of another road is a T-junction that reprojection rounding kept from
        # being noded, not a dead end
        hits = shapely.STRtree(roads).query(shapely.points(np.array(ends)), predicate="dwithin", distance=1.0)[0]
        touching = int((np.bincount(hits, minlength=len(ends)) >= 2).sum())
    v, e = g.number_of_nodes(), g.number_of_edges()
    hs = [h for h, _ in heights.values()]
    return {
        "features": {"polygons": int(poly.sum()), "lines": int((kinds == "line").sum()), "points": int(is_poi.sum())},
        "extent_km2": round(km2, 4),
        "landuse_share": {k: round(v_ / total, 4) for k, v_ in sorted(groups.items(), key=lambda t: -t[1])},
        "landuse_area_m2": {k: round(v_, 1) for k, v_ in sorted(classes.items(), key=lambda t: -t[1])},
        "poi_count": dict(sorted(poi_counts.items(), key=lambda t: (-t[1], t[0]))),
        "poi_density_per_km2": {k: round(c / km2, 2) for k, c in sorted(poi_counts.items(), key=lambda t: (-t[1], t[0]))},
        "road": {"count": int(is_road.sum()), "length_km": round(float(length[is_road].sum()) / 1000, 3),
                 "intersections": sum(1 for d in deg.values() if d >= 3) + touching, "dead_ends": len(ends) - touching,
                 "components": nx.number_connected_components(g) if v else 0,
                 # beta index (edges per node) and gamma (share of the planar maximum 3(v-2)): connectivity
                 "beta_index": round(e / v, 3) if v else 0.0,
                 "gamma_index": round(e / (3 * (v - 2)), 3) if v > 2 else 0.0,
                 "density_km_per_km2": round(float(length[is_road].sum()) / 1000 / float(km2), 3)},
        "green_coverage": round(groups.get("green", 0.0) / extent_m2, 4),
        "water_coverage": round(groups.get("water", 0.0) / extent_m2, 4),
        "building_coverage": round(groups.get("built", 0.0) / extent_m2, 4),
        "height_m": {"buildings_measured": len(hs), "mean": round(float(np.mean(hs)), 1) if hs else None,
                     "max": round(float(np.max(hs)), 1) if hs else None},
    }


def features_by_id(ssd: dict) -> dict[str, dict]:
    """All features of an SSD keyed by id."""
    return {f["id"]: f for sec in ("polygons", "lines", "points") for f in ssd.get(sec, [])}
