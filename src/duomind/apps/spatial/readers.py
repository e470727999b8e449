"""Readers: GeoJSON, OpenStreetMap XML, shapefiles, CSV points and point clouds into one `Scene`.

Every vector reader returns geometries in WGS84 lon/lat plus each feature's name and class (`fclass`,
as in Geofabrik's OSM shapefiles that SpatialLLM uses). Invalid geometries are repaired with a warning
(shapely's make_valid); empty files, unknown CRSs and coordinates that cannot be lon/lat are refused
with an error naming the fix.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import shape

from duomind.apps.spatial import geo

log = logging.getLogger(__name__)

# OSM keys that name a feature's class, most specific first
CLASS_KEYS = ("building", "amenity", "shop", "tourism", "leisure", "landuse", "natural", "water", "waterway",
              "highway", "railway", "historic", "office", "public_transport")
# OSM keys whose closed ways are areas rather than rings of road
AREA_KEYS = {"building", "landuse", "leisure", "natural", "amenity", "water", "shop", "tourism", "historic"}


@dataclass
class Scene:
    """Vector features (WGS84) and an optional point cloud (metric, in `cloud_crs`).

    Attributes:
        geoms: Shapely geometries in lon/lat, one per feature.
        names: Feature names ("" when the source has none).
        fclass: Feature classes (e.g. building, park, primary, cafe).
        props: Source attributes kept for the description (e.g. a building's known height).
        cloud: (N, 3) points or None.
        cloud_crs: CRS of the cloud's x, y (None: the scene's automatic UTM zone).
    """

    geoms: list = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    fclass: list[str] = field(default_factory=list)
    props: list[dict] = field(default_factory=list)
    cloud: np.ndarray | None = None
    cloud_crs: object = None

    def add(self, geom, name: str, fclass: str, props: dict | None = None) -> None:
        self.geoms.append(geom)
        self.names.append(name or "")
        self.fclass.append(fclass or "unknown")
        self.props.append(props or {})

    def extend(self, other: Scene) -> None:
        self.geoms += other.geoms
        self.names += other.names
        self.fclass += other.fclass
        self.props += other.props
        if other.cloud is not None:
            self.cloud = other.cloud if self.cloud is None else np.vstack([self.cloud, other.cloud])
            self.cloud_crs = other.cloud_crs

    def __len__(self) -> int:
        return len(self.geoms)


def _check_lonlat(geoms: np.ndarray, path: Path) -> None:
    if len(geoms) == 0:
        return
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
        raise ValueError(f"{path}: coordinates ({x0:.1f}..{x1:.1f}, {y0:.1f}..{y1:.1f}) are not longitude/latitude "
                         "and the file names no CRS; pass the data's CRS with --crs EPSG:XXXX.")


def clean(scene: Scene, path: Path, crs=None) -> Scene:
    """Reproject to WGS84, repair invalid geometries (warning), drop empty ones (warning)."""
    geoms = np.array(scene.geoms, dtype=object)
    if len(geoms) == 0:
        raise ValueError(f"{path}: no features found; check that the file holds the data you meant.")
    src = geo.parse_crs(crs)
    if src is not None and src != geo.WGS84:
        geoms = geo.transform(geoms, src, geo.WGS84)
    _check_lonlat(geoms, path)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        warnings.warn(f"{path}: repaired {int(bad.sum())} invalid geometries with make_valid "
                      "(self-intersections, unclosed rings)", stacklevel=2)
        fixed = shapely.make_valid(geoms[bad])
        # make_valid may return a collection mixing a polygon with stray lines: keep the highest dimension
        geoms[bad] = [_dominant(g) for g in fixed]
    empty = shapely.is_empty(geoms) | np.array([g is None for g in geoms])
    if empty.any():
        warnings.warn(f"{path}: dropped {int(empty.sum())} empty geometries", stacklevel=2)
    keep = np.flatnonzero(~empty)
    if len(keep) == 0:
        raise ValueError(f"{path}: every geometry is empty; nothing to describe.")
    return Scene([geoms[i] for i in keep], [scene.names[i] for i in keep], [scene.fclass[i] for i in keep],
                 [scene.props[i] for i in keep])


def _dominant(g):
    if g is None or g.geom_type != "GeometryCollection":
        return g
    parts = shapely.get_parts(g)
    dim = max(shapely.get_dimensions(parts))
    return shapely.union_all([p for p in parts if shapely.get_dimensions(p) == dim])


def _fclass(tags: dict) -> str:
    if tags.get("fclass"):
        return str(tags["fclass"])
    for key in CLASS_KEYS:
        if key in tags:
            value = str(tags[key])
            return key if value in ("yes", "true", "1") else value
    return "unknown"


def _name(tags: dict) -> str:
    for key in ("name", "NAME", "Name", "name:en"):
        if tags.get(key):
            return str(tags[key])
    return ""


def read_geojson(path: str | Path, crs=None) -> Scene:
    """A GeoJSON FeatureCollection, Feature or geometry (RFC 7946: lon/lat unless a legacy `crs` member says)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; write a GeoJSON FeatureCollection there.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from err
    named = (data.get("crs") or {}).get("properties", {}).get("name") if isinstance(data, dict) else None
    feats = data.get("features") if data.get("type") == "FeatureCollection" else \
        [data] if data.get("type") == "Feature" else [{"type": "Feature", "geometry": data, "properties": {}}]
    scene = Scene()
    for f in feats or []:
        if not f.get("geometry"):
            continue
        tags = f.get("properties") or {}
        try:
            g = shape(f["geometry"])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{path}: feature {f.get('id', '?')} has a malformed geometry ({err}).") from err
        scene.add(g, _name(tags), _fclass(tags), tags)
    return clean(scene, path, crs or named)


def read_osm(path: str | Path) -> Scene:
    """OpenStreetMap XML: tagged nodes become points, ways lines or (closed, area-tagged) polygons, and
    multipolygon relations polygons with holes (outer rings minus inner rings, each ring possibly split
    over several ways)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; export an area from OpenStreetMap as .osm XML.")
    nodes: dict[str, tuple[float, float]] = {}
    ways: dict[str, list[tuple[float, float]]] = {}  # every way's coordinates, for the relations that use them
    scene = Scene()
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag == "node":
                xy = (float(el.get("lon")), float(el.get("lat")))
                nodes[el.get("id")] = xy
                tags = {t.get("k"): t.get("v") for t in el.findall("tag")}
                if tags and ({"name"} | set(CLASS_KEYS)) & tags.keys():
                    scene.add(shapely.Point(xy), _name(tags), _fclass(tags), tags)
                el.clear()
            elif el.tag == "way":
                refs = [nd.get("ref") for nd in el.findall("nd")]
                tags = {t.get("k"): t.get("v") for t in el.findall("tag")}
                missing = [r for r in refs if r not in nodes]
                if not missing and len(refs) >= 2:
                    ways[el.get("id")] = [nodes[r] for r in refs]
                if missing or len(refs) < 2 or not tags:
                    if missing:
                        log.warning("%s: way %s references %d missing nodes; skipped", path, el.get("id"), len(missing))
                    el.clear()
                    continue
                coords = ways[el.get("id")]
                closed = refs[0] == refs[-1] and len(refs) >= 4
                area = closed and (tags.get("area") == "yes" or bool(AREA_KEYS & tags.keys()))
                g = shapely.Polygon(coords) if area else shapely.LineString(coords)
                scene.add(g, _name(tags), _fclass(tags), tags)
                el.clear()
            elif el.tag == "relation":
                tags = {t.get("k"): t.get("v") for t in el.findall("tag")}
                if tags.get("type") in ("multipolygon", "boundary"):
                    g = _multipolygon(el, ways, path)
                    if g is not None:
                        scene.add(g, _name(tags), _fclass(tags), tags)
                el.clear()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not well-formed OSM XML ({err}).") from err
    return clean(scene, path)


def _multipolygon(rel, ways: dict, path: Path):
    """A multipolygon relation's geometry: rings formed from its outer ways (role outer or empty) minus those
    formed from its inner ways; None (with a warning) when no closed outer ring can be formed."""
    rings: dict[str, list] = {"outer": [], "inner": []}
    missing = 0
    for m in rel.findall("member"):
        if m.get("type") != "way":
            continue
        coords = ways.get(m.get("ref"))
        if coords is None:
            missing += 1
            continue
        rings["inner" if m.get("role") == "inner" else "outer"].append(shapely.LineString(coords))
    if missing:
        warnings.warn(f"{path}: relation {rel.get('id')} lacks {missing} member ways (a clipped extract?); "
                      "built from the members present", stacklevel=3)
    # polygonize joins ways that share end nodes into rings: a ring may be split over several ways
    outer = shapely.union_all(shapely.get_parts(shapely.polygonize(rings["outer"])))
    if outer.is_empty:
        warnings.warn(f"{path}: relation {rel.get('id')} has no closed outer ring; skipped", stacklevel=3)
        return None
    inner = shapely.union_all(shapely.get_parts(shapely.polygonize(rings["inner"])))
    return outer.difference(inner) if not inner.is_empty else outer


def read_shapefile(path: str | Path, crs=None) -> Scene:
    """An ESRI shapefile (.shp with .dbf; the .prj gives the CRS, else --crs or lon/lat)."""
    import shapefile

    path = Path(path)
    prj = path.with_suffix(".prj")
    if crs is None and prj.is_file():
        crs = prj.read_text()
    elif crs is None:
        warnings.warn(f"{path}: no .prj file; assuming lon/lat (WGS84). Pass --crs if that is wrong.", stacklevel=2)
    try:
        reader = shapefile.Reader(str(path))
    except shapefile.ShapefileException as err:
        raise ValueError(f"{path}: unreadable shapefile ({err}); it needs its .shp, .shx and .dbf.") from err
    scene = Scene()
    with reader:
        fields = [f[0] for f in reader.fields[1:]]
        for sr in reader.iterShapeRecords():
            if sr.shape.shapeType == shapefile.NULL:
                continue
            tags = dict(zip(fields, sr.record))
            scene.add(shape(sr.shape.__geo_interface__), _name(tags), _fclass(tags), tags)
    return clean(scene, path, crs)


def read_csv_points(path: str | Path, crs=None) -> Scene:
    """CSV points with lon/lat (or longitude/latitude, x/y) columns and optional name, fclass columns."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no rows; a header line (lon,lat,name,fclass) and one row per point are needed.")
    cols = {c.lower(): c for c in rows[0]}
    for xk, yk in (("lon", "lat"), ("longitude", "latitude"), ("lng", "lat"), ("x", "y")):
        if xk in cols and yk in cols:
            break
    else:
        raise ValueError(f"{path}: no coordinate columns among {list(rows[0])}; name them lon,lat (or x,y with --crs).")
    scene = Scene()
    for n, row in enumerate(rows, 2):
        try:
            pt = shapely.Point(float(row[cols[xk]]), float(row[cols[yk]]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{n}: coordinates {row[cols[xk]]!r}, {row[cols[yk]]!r} are not numbers.") from err
        tags = {k: v for k, v in row.items() if k not in (cols[xk], cols[yk])}
        scene.add(pt, _name(tags), _fclass(tags) if "fclass" in tags or set(CLASS_KEYS) & tags.keys()
                  else tags.get("category", "poi"), tags)
    return clean(scene, path, crs)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply(path: str | Path) -> np.ndarray:
    """x, y, z of a PLY point cloud (ascii or binary, vertex element first); returns (N, 3)."""
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header').")
    header = raw[:end].decode("ascii", "replace").splitlines()
    body = raw[raw.index(b"\n", end) + 1:]
    fmt, count, props, in_vertex = "ascii", 0, [], False
    for line in header:
        parts = line.split()
        if parts[:1] == ["format"]:
            fmt = parts[1]
        elif parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
            elif count == 0:
                raise ValueError(f"{path}: the vertex element must come first.")
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list":
                raise ValueError(f"{path}: list properties on vertices are not supported.")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: vertices need x, y, z properties; found {names}.")
    if count == 0:
        raise ValueError(f"{path}: the point cloud has no points.")
    if fmt == "ascii":
        arr = np.loadtxt(body.decode().splitlines()[:count], ndmin=2)
        return arr[:, [names.index("x"), names.index("y"), names.index("z")]].astype(float)
    order = "<" if fmt == "binary_little_endian" else ">"
    dt = np.dtype([(n, order + t) for n, t in props])
    arr = np.frombuffer(body, dtype=dt, count=count)
    return np.column_stack([arr["x"], arr["y"], arr["z"]]).astype(float)


def write_ply(path: str | Path, xyz: np.ndarray) -> None:
    """Write (N, 3) points as a binary little-endian PLY."""
    xyz = np.asarray(xyz, dtype="<f8")
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty double x\n"
            "property double y\nproperty double z\nend_header\n").encode()
    Path(path).write_bytes(head + xyz.tobytes())


def read_las(path: str | Path) -> tuple[np.ndarray, object]:
    """x, y, z (scaled and offset) of an ASPRS LAS point cloud, and the CRS its header names (or None)."""
    try:
        import laspy
    except ImportError as err:
        raise ValueError(f"{path}: reading .las needs laspy (pip install 'duomind[spatial]'); or convert to .ply.") from err
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: the point cloud file is empty.")
    try:
        las = laspy.read(str(path))
    except laspy.errors.LaspyException as err:
        hint = " (.laz needs a LAZ backend: pip install lazrs)" if str(path).lower().endswith(".laz") else ""
        raise ValueError(f"{path}: unreadable LAS file ({err}){hint}.") from err
    if len(las.points) == 0:
        raise ValueError(f"{path}: the point cloud has no points.")
    try:
        crs = las.header.parse_crs()
    except Exception as err:  # a malformed CRS record should not cost the points: the user can name it
        warnings.warn(f"{path}: the CRS record of the header is unreadable ({err}); pass --cloud_crs", stacklevel=2)
        crs = None
    return np.column_stack([las.x, las.y, las.z]).astype(float), crs


def read_cloud(path: str | Path) -> np.ndarray:
    """A point cloud (.ply, .txt/.xyz/.csv with x y z as first columns, .las/.laz with laspy) as (N, 3)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the point cloud file is empty.")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix in (".las", ".laz"):
        return read_las(path)[0]
    text = path.read_text()
    delim = "," if "," in text.split("\n", 1)[0] else None
    try:
        arr = np.loadtxt(path, delimiter=delim, ndmin=2, usecols=(0, 1, 2))
    except ValueError:
        arr = np.loadtxt(path, delimiter=delim, ndmin=2, usecols=(0, 1, 2), skiprows=1)  # a header line
    return arr.astype(float)


VECTOR = {".geojson": read_geojson, ".json": read_geojson, ".osm": read_osm, ".shp": read_shapefile,
          ".csv": read_csv_points}
CLOUD = (".ply", ".txt", ".xyz", ".las", ".laz")


def read(paths: list[str | Path], crs=None, cloud_crs=None) -> Scene:
    """Read vector files and point clouds into one scene (each vector file reprojected to WGS84 on its own)."""
    scene = Scene()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"input {str(p)!r} does not exist.")
        suffix = p.suffix.lower()
        if suffix in CLOUD:
            own = None
            if suffix in (".las", ".laz"):
                pts, own = read_las(p)  # a LAS header may name its CRS; --cloud_crs overrides it
            else:
                pts = read_cloud(p)
            crs_here = geo.parse_crs(cloud_crs) if cloud_crs is not None else own
            if scene.cloud is not None and crs_here != scene.cloud_crs:
                raise ValueError(f"{p}: this point cloud's CRS ({getattr(crs_here, 'name', None)}) differs from the "
                                 f"previous cloud's ({getattr(scene.cloud_crs, 'name', None)}); reproject the clouds "
                                 "to one CRS (e.g. with PDAL) or describe them separately.")
            scene.cloud = pts if scene.cloud is None else np.vstack([scene.cloud, pts])
            scene.cloud_crs = crs_here
        elif suffix in VECTOR:
            reader = VECTOR[suffix]
            scene.extend(reader(p) if suffix == ".osm" else reader(p, crs=crs))
        else:
            raise ValueError(f"{p}: unknown input type {suffix!r}; use one of {sorted([*VECTOR, *CLOUD])}.")
    if not len(scene):
        raise ValueError("no vector features among the inputs: give at least one GeoJSON, .osm, .shp or .csv file.")
    return scene
