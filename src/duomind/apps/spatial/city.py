"""A synthetic city: streets on a grid, blocks of buildings with heights, parks (with a paved plaza cut out,
so polygons with holes occur), water, POIs, a point cloud sampled from the buildings, and image captions
(camera in front of a building, or naming a park) such as a captioner would give. Written as GeoJSON, OSM
XML (parks as multipolygon relations), a shapefile, CSV points, PLY and a captions JSON, so every reader
runs offline and the ground truth (true building heights, what each image shows) is known.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely

from duomind.apps.spatial import geo
from duomind.apps.spatial.readers import Scene, write_ply

POI_CLASSES = ("cafe", "restaurant", "school", "hospital", "bank", "pharmacy", "bus_stop", "supermarket",
               "library", "museum")
# OSM key of each synthetic class, so the .osm file tags features the way OSM does
OSM_KEY = {"building": "building", "park": "leisure", "water": "natural", "primary": "highway",
           "residential": "highway", **{c: "amenity" for c in POI_CLASSES}}
OSM_KEY.update({"supermarket": "shop", "museum": "tourism", "bus_stop": "highway"})
_WORDS = ("Oak", "Maple", "Cedar", "Pine", "Elm", "Birch", "Willow", "Lake", "River", "Hill", "Park", "Sun",
          "Moon", "Star", "Rose", "Lotus", "Jade", "Pearl", "Iron", "Stone")


@dataclass
class City:
    """A synthetic city in lon/lat plus its metric frame and ground truth.

    Attributes:
        scene: Features (WGS84) and the point cloud (metric, in `crs`).
        crs: The UTM CRS the city was laid out in (the cloud's CRS).
        heights: True height of each building, keyed by feature index in `scene`.
    """

    scene: Scene
    crs: object
    heights: dict[int, float] = field(default_factory=dict)


def _name(kind: str, n: int) -> str:
    return f"{_WORDS[n % len(_WORDS)]} {kind.replace('_', ' ').title()} {n}"


def make_city(blocks_x: int = 6, blocks_y: int = 6, block_m: float = 120.0, seed: int = 0,
              origin: tuple[float, float] = (114.36, 30.54), pois_per_block: float = 1.5,
              cloud_points_per_building: int = 60) -> City:
    """Lay out a city of blocks_x x blocks_y blocks around `origin` (lon, lat).

    Streets run along every block edge (every third one primary); each block is a park (15%), a pond
    (5%) or 1-4 buildings with heights 6-90 m; POIs sit beside buildings. The point cloud holds, per
    building, ground points along the footprint at z = 0, wall points and roof points at the true height.
    """
    rng = np.random.default_rng(seed)
    crs = geo.utm_crs(*origin)
    ox, oy = geo.transform_xy([origin[0]], [origin[1]], geo.WGS84, crs)
    ox, oy = float(ox[0]), float(oy[0])
    w, h = blocks_x * block_m, blocks_y * block_m
    metric: list = []
    names, classes = [], []
    heights: dict[int, float] = {}
    cloud: list[np.ndarray] = []
    counter = {"n": 0}

    def add(g, kind: str, fclass: str) -> int:
        counter["n"] += 1
        metric.append(g)
        names.append(_name(kind, counter["n"]))
        classes.append(fclass)
        return len(metric) - 1

    for i in range(blocks_x + 1):  # north-south avenues
        add(shapely.LineString([(ox + i * block_m, oy), (ox + i * block_m, oy + h)]), "avenue",
            "primary" if i % 3 == 0 else "residential")
    for j in range(blocks_y + 1):  # east-west streets
        add(shapely.LineString([(ox, oy + j * block_m), (ox + w, oy + j * block_m)]), "street",
            "primary" if j % 3 == 0 else "residential")
    inset = 12.0
    for i in range(blocks_x):
        for j in range(blocks_y):
            x0, y0 = ox + i * block_m + inset, oy + j * block_m + inset
            size = block_m - 2 * inset
            r = rng.random()
            if r < 0.15:  # a park around a paved plaza: a polygon with a hole
                plaza = shapely.box(x0 + 0.35 * size, y0 + 0.35 * size, x0 + 0.65 * size, y0 + 0.65 * size)
                add(shapely.box(x0, y0, x0 + size, y0 + size).difference(plaza), "park", "park")
            elif r < 0.20:
                c = shapely.Point(x0 + size / 2, y0 + size / 2)
                add(c.buffer(size * rng.uniform(0.25, 0.45), quad_segs=8), "pond", "water")
            else:
                lots = int(rng.integers(1, 5))
                half = size / 2
                for k in range(lots):
                    lx, ly = x0 + (k % 2) * half, y0 + (k // 2) * half
                    bw, bh = rng.uniform(0.45, 0.85, 2) * half
                    fx, fy = lx + rng.uniform(2, half - bw - 2), ly + rng.uniform(2, half - bh - 2)
                    fp = shapely.box(fx, fy, fx + bw, fy + bh)
                    idx = add(fp, "hall", "building")
                    height = float(np.round(rng.uniform(6, 90), 1))
                    heights[idx] = height
                    cloud.append(_building_cloud(fp, height, cloud_points_per_building, rng))
            for _ in range(rng.poisson(pois_per_block)):
                px, py = x0 + rng.uniform(0, size), y0 + rng.uniform(0, size)
                cls = POI_CLASSES[int(rng.integers(len(POI_CLASSES)))]
                add(shapely.Point(px, py), cls, cls)
    geoms = geo.transform(np.array(metric, dtype=object), crs, geo.WGS84)
    scene = Scene(list(geoms), names, classes, [{} for _ in names])
    scene.cloud = np.vstack(cloud) if cloud else None
    scene.cloud_crs = crs
    return City(scene, crs, heights)


def _building_cloud(fp, height: float, n: int, rng) -> np.ndarray:
    """Points of one building: 10% ground along the footprint's inside, 20% walls, 70% roof."""
    x0, y0, x1, y1 = fp.bounds
    ring = fp.exterior
    n_ground, n_wall = max(1, n // 10), max(1, n // 5)
    n_roof = max(1, n - n_ground - n_wall)

    def on_ring(k: int) -> np.ndarray:
        pts = shapely.line_interpolate_point(ring, rng.uniform(0, ring.length, k))
        xy = shapely.get_coordinates(pts)
        c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        return c + (xy - c) * 0.98  # just inside, so the point falls within the footprint

    ground = np.column_stack([on_ring(n_ground), np.zeros(n_ground)])
    wall = np.column_stack([on_ring(n_wall), rng.uniform(0, height, n_wall)])
    roof = np.column_stack([rng.uniform(x0 + 0.5, x1 - 0.5, n_roof), rng.uniform(y0 + 0.5, y1 - 0.5, n_roof),
                            height + rng.normal(0, 0.05, n_roof)])
    return np.vstack([ground, wall, roof])


def city_for_features(n: int, seed: int = 0, **kw) -> City:
    """A square city with exactly n features: the largest grid of blocks (about 3.7 features per block)
    holding at most n, topped up with POIs at random places in it."""
    side = max(2, round(math.sqrt(n / 3.75)))
    city = make_city(side, side, seed=seed, **kw)
    while len(city.scene) > n and side > 2:
        side -= 1
        city = make_city(side, side, seed=seed, **kw)
    if len(city.scene) > n:
        raise ValueError(f"n={n} features is fewer than the smallest city holds ({len(city.scene)}).")
    s = city.scene
    rng = np.random.default_rng(seed + 1)
    x0, y0, x1, y1 = shapely.total_bounds(np.array(s.geoms, dtype=object))
    for k in range(len(s), n):
        cls = POI_CLASSES[int(rng.integers(len(POI_CLASSES)))]
        s.add(shapely.Point(rng.uniform(x0, x1), rng.uniform(y0, y1)), _name(cls, k + 1), cls)
    return city


def write_city(city: City, out_dir: str | Path) -> dict[str, Path]:
    """Write the city as city.geojson, city.osm, buildings.shp (+.dbf/.shx/.prj), pois.csv, city.ply,
    captions.json and truth.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = city.scene
    feats = [{"type": "Feature", "id": i, "geometry": shapely.geometry.mapping(g),
              "properties": {"name": n, "fclass": c}} for i, (g, n, c) in enumerate(zip(s.geoms, s.names, s.fclass))]
    paths = {"geojson": out / "city.geojson", "osm": out / "city.osm", "shp": out / "buildings.shp",
             "csv": out / "pois.csv", "ply": out / "city.ply", "captions": out / "captions.json",
             "truth": out / "truth.json"}
    paths["geojson"].write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    _write_osm(s, paths["osm"])
    _write_shapefile(s, paths["shp"])
    with paths["csv"].open("w") as fh:
        fh.write("lon,lat,name,fclass\n")
        for g, n, c in zip(s.geoms, s.names, s.fclass):
            if g.geom_type == "Point":
                fh.write(f"{g.x:.8f},{g.y:.8f},{n},{c}\n")
    write_ply(paths["ply"], s.cloud if s.cloud is not None else np.zeros((0, 3)))
    captions, shows = _captions(city)
    paths["captions"].write_text(json.dumps(captions, indent=0))
    paths["truth"].write_text(json.dumps({"crs": city.crs.to_string(), "heights": {
        s.names[i]: h for i, h in city.heights.items()}, "captions": shows}))
    return paths


_FACADES = ("red brick", "grey concrete", "glass and steel", "white stone", "yellow plaster")


def _captions(city: City) -> tuple[list[dict], dict[str, str]]:
    """Caption records as a captioner would give them, and which feature each image truly shows.

    Each building is photographed from 2 m south of its footprint looking north (camera position and
    heading only, as from a street-level image's metadata); each park's caption names the park.
    """
    s = city.scene
    out, shows = [], {}
    for i, (g, name, cls) in enumerate(zip(s.geoms, s.names, s.fclass)):
        if cls == "building":
            x0, y0, x1, _ = g.bounds
            img = f"img_{len(out):05d}.jpg"
            floors = max(1, round(city.heights[i] / 3.2))
            out.append({"image": img, "lon": round((x0 + x1) / 2, 8), "lat": round(y0 - 2.0 / 111_320, 8),
                        "heading": 0.0, "caption": f"a {_FACADES[i % len(_FACADES)]} building of about {floors} "
                                                   "storeys with a flat roof"})
            shows[img] = name
        elif cls == "park":
            img = f"img_{len(out):05d}.jpg"
            out.append({"image": img, "feature": name, "caption": "lawns and trees around a paved central plaza"})
            shows[img] = name
    return out, shows


def _write_osm(s: Scene, path: Path) -> None:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="duomind">']
    ways, relations = [], []
    nid = 0
    for k, (g, name, cls) in enumerate(zip(s.geoms, s.names, s.fclass)):
        tags = f'<tag k="name" v={quoteattr(name)}/><tag k="{OSM_KEY.get(cls, "amenity")}" v={quoteattr(cls)}/>'
        if cls == "building":
            tags = f'<tag k="name" v={quoteattr(name)}/><tag k="building" v="yes"/>'
        if g.geom_type == "Point":
            nid += 1
            lines.append(f'<node id="{nid}" lat="{g.y:.9f}" lon="{g.x:.9f}">{tags}</node>')
            continue
        if g.geom_type == "Polygon" and g.interiors:
            # a multipolygon relation, tags on the relation; the outer ring is split over two ways, as
            # mappers often do, so a reader must join the pieces into a ring
            members = []
            for role, ring in (("outer", g.exterior), *(("inner", r) for r in g.interiors)):
                nid, refs = _ring_nodes(ring, nid, lines)
                pieces = [refs[:len(refs) // 2 + 1], refs[len(refs) // 2:]] if role == "outer" else [refs]
                for piece in pieces:
                    wid = 10**9 + len(relations) * 10 + len(members)
                    ways.append(f'<way id="{wid}">' + "".join(f'<nd ref="{r}"/>' for r in piece) + "</way>")
                    members.append(f'<member type="way" ref="{wid}" role="{role}"/>')
            relations.append(f'<relation id="{k + 1}">' + "".join(members) + '<tag k="type" v="multipolygon"/>'
                             + tags + "</relation>")
            continue
        if g.geom_type == "Polygon":
            nid, refs = _ring_nodes(g.exterior, nid, lines)
        else:
            refs = []
            for x, y in g.coords:
                nid += 1
                lines.append(f'<node id="{nid}" lat="{y:.9f}" lon="{x:.9f}"/>')
                refs.append(nid)
        ways.append(f'<way id="{k + 1}">' + "".join(f'<nd ref="{r}"/>' for r in refs) + tags + "</way>")
    Path(path).write_text("\n".join(lines + ways + relations + ["</osm>"]))


def _ring_nodes(ring, nid: int, lines: list[str]) -> tuple[int, list[int]]:
    """Write a closed ring's nodes; returns the last node id used and the ring's refs (first repeated last)."""
    refs = []
    for x, y in list(ring.coords)[:-1]:
        nid += 1
        lines.append(f'<node id="{nid}" lat="{y:.9f}" lon="{x:.9f}"/>')
        refs.append(nid)
    return nid, refs + refs[:1]


def _write_shapefile(s: Scene, path: Path) -> None:
    import shapefile

    with shapefile.Writer(str(path), shapeType=shapefile.POLYGON) as w:
        w.field("name", "C", size=80)
        w.field("fclass", "C", size=40)
        for g, n, c in zip(s.geoms, s.names, s.fclass):
            if g.geom_type == "Polygon":
                w.shape(shapely.geometry.mapping(g))
                w.record(n, c)
    path.with_suffix(".prj").write_text(geo.WGS84.to_wkt())
