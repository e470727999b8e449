"""Spatial inputs: OSM multipolygon relations, .las point clouds, image captions, and bad input of each kind."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import shapely

from duomind.apps.spatial import captions, geo, readers
from duomind.apps.spatial.city import make_city, write_city
from duomind.apps.spatial.render import feature_line
from duomind.apps.spatial.ssd import describe, features_by_id


@pytest.fixture(scope="module")
def city():
    return make_city(4, 4, seed=1)


@pytest.fixture(scope="module")
def files(city, tmp_path_factory):
    return write_city(city, tmp_path_factory.mktemp("city_inputs"))


def _osm(body: str) -> str:
    return f'<?xml version="1.0"?>\n<osm version="0.6">\n{body}\n</osm>'


# a 0.002 x 0.002 degree square (outer, split over two ways) around a 0.0005-degree square hole
_SQUARE = """
<node id="1" lon="114.000" lat="30.000"/><node id="2" lon="114.002" lat="30.000"/>
<node id="3" lon="114.002" lat="30.002"/><node id="4" lon="114.000" lat="30.002"/>
<node id="5" lon="114.001" lat="30.001"/><node id="6" lon="114.0015" lat="30.001"/>
<node id="7" lon="114.0015" lat="30.0015"/><node id="8" lon="114.001" lat="30.0015"/>
<way id="10"><nd ref="1"/><nd ref="2"/><nd ref="3"/></way>
<way id="11"><nd ref="3"/><nd ref="4"/><nd ref="1"/></way>
<way id="12"><nd ref="5"/><nd ref="6"/><nd ref="7"/><nd ref="8"/><nd ref="5"/></way>
"""


def test_osm_multipolygon_relation_becomes_a_polygon_with_a_hole(tmp_path):
    path = tmp_path / "mp.osm"
    path.write_text(_osm(_SQUARE + """
<relation id="20"><member type="way" ref="10" role="outer"/><member type="way" ref="11" role="outer"/>
<member type="way" ref="12" role="inner"/><tag k="type" v="multipolygon"/><tag k="leisure" v="park"/>
<tag k="name" v="Ring Park"/></relation>"""))
    scene = readers.read([path])
    assert len(scene) == 1 and scene.names == ["Ring Park"] and scene.fclass == ["park"]
    g = scene.geoms[0]
    assert g.geom_type == "Polygon" and len(g.interiors) == 1
    outer = shapely.box(114.0, 30.0, 114.002, 30.002)
    hole = shapely.box(114.001, 30.001, 114.0015, 30.0015)
    assert geo.geodesic_area_m2(g) == pytest.approx(geo.geodesic_area_m2(outer) - geo.geodesic_area_m2(hole), rel=1e-9)


def test_osm_multipolygon_with_missing_members_warns_or_is_skipped(tmp_path):
    path = tmp_path / "clipped.osm"
    # only half of the outer ring is in the extract: no closed ring, the relation is skipped with a warning
    path.write_text(_osm(_SQUARE + """
<relation id="20"><member type="way" ref="10" role="outer"/><member type="way" ref="99" role="outer"/>
<tag k="type" v="multipolygon"/><tag k="natural" v="water"/></relation>
<node id="30" lon="114.001" lat="30.003"><tag k="amenity" v="cafe"/></node>"""))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scene = readers.read([path])
    said = " ".join(str(w.message) for w in record)
    assert "lacks 1 member ways" in said and "no closed outer ring" in said
    assert scene.fclass == ["cafe"]


def test_synthetic_city_writes_multipolygons_that_read_back(city, files):
    text = files["osm"].read_text()
    parks = [g for g, c in zip(city.scene.geoms, city.scene.fclass) if c == "park"]
    assert parks and all(len(g.interiors) == 1 for g in parks)
    assert text.count('<tag k="type" v="multipolygon"/>') == len(parks)
    back = readers.read([files["osm"]])
    back_parks = [g for g, c in zip(back.geoms, back.fclass) if c == "park"]
    assert all(g.geom_type == "Polygon" and len(g.interiors) == 1 for g in back_parks)
    got = sorted(geo.geodesic_area_m2(g) for g in back_parks)
    np.testing.assert_allclose(got, sorted(geo.geodesic_area_m2(g) for g in parks), rtol=1e-5)  # 9 decimals
    ssd = describe(back)
    assert sum(f["fclass"] == "park" for f in ssd["polygons"]) == len(parks)


def _write_las(path, xyz: np.ndarray, epsg: int | None = None) -> None:
    import laspy
    import pyproj

    header = laspy.LasHeader(point_format=3, version="1.4")
    header.offsets = xyz.min(axis=0)
    header.scales = np.array([0.001, 0.001, 0.001])
    if epsg is not None:
        header.add_crs(pyproj.CRS.from_epsg(epsg))
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.write(str(path))


def test_las_round_trip_and_its_crs_describe_like_the_ply(city, files, tmp_path):
    las_path = tmp_path / "city.las"
    _write_las(las_path, city.scene.cloud, epsg=city.crs.to_epsg())
    np.testing.assert_allclose(readers.read_cloud(las_path), city.scene.cloud, atol=1e-3)  # 1 mm scale
    via_las = readers.read([files["geojson"], las_path])  # no --cloud_crs: the LAS header names it
    assert via_las.cloud_crs.to_epsg() == city.crs.to_epsg()
    via_ply = readers.read([files["geojson"], files["ply"]], cloud_crs=city.crs.to_string())
    a, b = describe(via_las), describe(via_ply)
    assert [f["height_m"] for f in a["polygons"]] == pytest.approx([f["height_m"] for f in b["polygons"]], abs=0.01)


def test_synthetic_captions_attach_to_what_each_image_shows(city, files):
    caps = captions.read_captions(files["captions"])
    truth = json.loads(files["truth"].read_text())["captions"]
    assert any("lon" in c for c in caps) and any("feature" in c for c in caps)
    ssd = describe(city.scene, captions=caps)
    got = {}
    for f in features_by_id(ssd).values():
        for c in f.get("image_caption", []):
            got.setdefault(c, []).append(f["name"])
    for c in caps:
        assert truth[c["image"]] in got[c["caption"]], c
    st = ssd["stats"]["image_captions"]
    assert st["given"] == len(caps) == st["attached"] and st["unmatched"] == 0
    with_caption = next(f for f in ssd["polygons"] if f.get("image_caption"))
    assert "img: " + with_caption["image_caption"][0] in feature_line(with_caption)


def test_camera_captions_respect_the_view_direction(city, tmp_path):
    b = next(g for g, c in zip(city.scene.geoms, city.scene.fclass) if c == "building")
    x0, y0, x1, _ = b.bounds
    cam = {"caption": "a wall", "lon": (x0 + x1) / 2, "lat": y0 - 2.0 / 111_320}
    path = tmp_path / "c.csv"
    path.write_text("caption,lon,lat,heading\n"
                    f"facing it,{cam['lon']},{cam['lat']},0\nfacing away,{cam['lon']},{cam['lat']},180\n"
                    "nowhere,0.0,0.0,\n")
    caps = captions.read_captions(path)
    assert caps[1]["heading"] == 180.0 and "heading" not in caps[2]
    with pytest.warns(UserWarning, match="match no feature"):
        ssd = describe(city.scene, captions=caps)
    name = city.scene.names[city.scene.geoms.index(b)]
    f = next(f for f in ssd["polygons"] if f["name"] == name)
    assert f["image_caption"] == ["facing it"]
    shown = [c for g in features_by_id(ssd).values() for c in g.get("image_caption", [])]
    assert "nowhere" not in shown  # (facing away, the camera sees whatever lies south, if anything)
    assert ssd["stats"]["image_captions"]["unmatched"] == 1 + ("facing away" not in shown)


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("{not json", "not valid JSON"),
    ('[{"lon": 1, "lat": 2}]', "no caption"),
    ('[{"caption": "a tower"}]', "neither which feature"),
    ('[{"caption": "x", "lon": 500000, "lat": 3000000}]', "not lon/lat"),
    ('{"images": []}', "list of caption records"),
])
def test_bad_caption_files_name_the_fix(tmp_path, text, match):
    path = tmp_path / "caps.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        captions.read_captions(path)
    with pytest.raises(FileNotFoundError):
        captions.read_captions(tmp_path / "missing.json")


def test_bad_input_files(tmp_path, city, files):
    for name in ("a.osm", "b.ply", "c.las", "d.txt", "e.csv"):
        (tmp_path / name).write_text("")
        with pytest.raises(ValueError, match="empty|no rows"):
            readers.read([tmp_path / name, files["geojson"]] if name[-3:] in ("ply", "las", "txt") else [tmp_path / name])
    (tmp_path / "broken.osm").write_text("<osm><node id='1'")
    with pytest.raises(ValueError, match="not well-formed"):
        readers.read([tmp_path / "broken.osm"])
    (tmp_path / "junk.las").write_bytes(b"not a las file at all" * 20)
    with pytest.raises(ValueError, match="unreadable LAS"):
        readers.read([files["geojson"], tmp_path / "junk.las"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.read([tmp_path / "nope.geojson"])
    # an .osm bow-tie building is repaired with a warning
    (tmp_path / "bowtie.osm").write_text(_osm(
        '<node id="1" lon="0" lat="0"/><node id="2" lon="0.001" lat="0.001"/><node id="3" lon="0.001" lat="0"/>'
        '<node id="4" lon="0" lat="0.001"/><way id="9"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/>'
        '<nd ref="1"/><tag k="building" v="yes"/></way>'))
    with pytest.warns(UserWarning, match="repaired 1 invalid"):
        scene = readers.read([tmp_path / "bowtie.osm"])
    assert shapely.is_valid(scene.geoms[0]) and scene.geoms[0].area > 0


def test_mixed_crs_clouds_are_refused_and_partial_overlap_warns(city, files, tmp_path):
    _write_las(tmp_path / "utm.las", city.scene.cloud, epsg=city.crs.to_epsg())
    _write_las(tmp_path / "merc.las", city.scene.cloud, epsg=3857)
    with pytest.raises(ValueError, match="differs from the previous cloud"):
        readers.read([files["geojson"], tmp_path / "utm.las", tmp_path / "merc.las"])
    half = readers.read([files["geojson"]])
    far = city.scene.cloud + np.array([1e5, 0, 0])
    half.cloud, half.cloud_crs = np.vstack([city.scene.cloud, far, far]), city.crs
    with pytest.warns(UserWarning, match="of the point cloud lies within the map"):
        out = describe(half)
    assert all(f["height_m"] is not None for f in out["polygons"] if f["fclass"] == "building")


def test_a_geojson_in_an_unknown_crs_is_refused(tmp_path):
    path = tmp_path / "odd.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "EPSG:999999"}}, "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
                                               "properties": {}}]}))
    with pytest.raises(ValueError, match="unknown CRS"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readers.read([path])


@pytest.mark.parametrize("n", [300, 777])
def test_city_for_features_has_exactly_n_unique_features(n):
    from duomind.apps.spatial.city import city_for_features

    city = city_for_features(n, seed=2, cloud_points_per_building=4)
    assert len(city.scene) == n and len(set(city.scene.names)) == n
    with pytest.raises(ValueError, match="fewer than the smallest city"):
        city_for_features(3)
