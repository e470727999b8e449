"""Spatial app: geometry invariants, readers' round trip of the synthetic city, the SSD, rendering, questions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import shapely

from duomind.apps.spatial import geo, questions, readers
from duomind.apps.spatial.city import make_city, write_city
from duomind.apps.spatial.render import count_tokens, render
from duomind.apps.spatial.ssd import describe, features_by_id


@pytest.fixture(scope="module")
def city():
    return make_city(4, 4, seed=1)


@pytest.fixture(scope="module")
def ssd(city):
    return describe(city.scene)


@pytest.fixture(scope="module")
def files(city, tmp_path_factory):
    return write_city(city, tmp_path_factory.mktemp("city"))


def test_bearings_are_opposite_and_distances_symmetric_and_geodesic():
    rng = np.random.default_rng(0)
    lon1, lat1 = 114 + rng.random(500) * 0.05, 30 + rng.random(500) * 0.05
    lon2, lat2 = 114 + rng.random(500) * 0.05, 30 + rng.random(500) * 0.05
    ab, ba = geo.bearing_index(lon1, lat1, lon2, lat2), geo.bearing_index(lon2, lat2, lon1, lat1)
    assert np.array_equal((ab + 4) % 8, ba)
    d1, d2 = geo.geodesic_m(lon1, lat1, lon2, lat2), geo.geodesic_m(lon2, lat2, lon1, lat1)
    np.testing.assert_allclose(d1, d2, rtol=1e-9)
    import pyproj

    _, _, ref = pyproj.Geod(ellps="WGS84").inv(lon1, lat1, lon2, lat2)
    np.testing.assert_allclose(d1, ref, rtol=1e-9)
    assert geo.bearing8(0, 0, 0, 1) == "N" and geo.bearing8(0, 0, 1, 0) == "E" and geo.bearing8(0, 0, -1, -1) == "SW"


def test_utm_zone_and_bad_coordinates():
    assert geo.utm_crs(114.36, 30.54).to_epsg() == 32650
    assert geo.utm_crs(-73.98, -40.0).to_epsg() == 32718
    with pytest.raises(ValueError, match="--crs"):
        geo.utm_crs(500000.0, 4000000.0)


def test_affine_fit_recovers_a_known_map():
    rng = np.random.default_rng(1)
    src = rng.random((6, 2)) * 100
    m = np.array([[0.9, 0.1], [-0.1, 0.9], [500.0, 200.0]])
    dst = np.column_stack([src, np.ones(6)]) @ m
    np.testing.assert_allclose(geo.fit_affine(src, dst), m, atol=1e-8)


@pytest.mark.parametrize("kind", ["geojson", "osm"])
def test_reader_round_trip_keeps_counts_classes_and_areas(city, files, kind):
    scene = readers.read([files[kind]])
    assert len(scene) == len(city.scene)
    assert sorted(scene.fclass) == sorted(city.scene.fclass)
    a0 = sorted(geo.geodesic_area_m2(g) for g in city.scene.geoms if g.geom_type == "Polygon")
    a1 = sorted(geo.geodesic_area_m2(g) for g in scene.geoms if g.geom_type == "Polygon")
    np.testing.assert_allclose(a1, a0, rtol=1e-5)  # .osm keeps 9 decimals


def test_shapefile_and_csv_readers(city, files):
    shp = readers.read([files["shp"]])
    assert len(shp) == sum(g.geom_type == "Polygon" for g in city.scene.geoms)
    pts = readers.read([files["csv"]])
    assert len(pts) == sum(g.geom_type == "Point" for g in city.scene.geoms)
    assert set(pts.fclass) <= set(city.scene.fclass)


def test_ply_round_trip(city, files):
    np.testing.assert_allclose(readers.read_cloud(files["ply"]), city.scene.cloud)


def test_ascii_ply_and_txt_clouds(tmp_path):
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                                    "property float z\nend_header\n1 2 3\n4 5 6\n")
    (tmp_path / "b.txt").write_text("x,y,z\n1,2,3\n4,5,6\n")
    for name in ("a.ply", "b.txt"):
        np.testing.assert_allclose(readers.read_cloud(tmp_path / name), [[1, 2, 3], [4, 5, 6]])


def test_ssd_fields_and_relation_invariants(ssd):
    byid = features_by_id(ssd)
    assert set(ssd) >= {"polygons", "lines", "points", "stats"}
    for f in byid.values():
        assert {"id", "name", "fclass", "center", "relations"} <= f.keys()
        assert len(f["relations"]) <= 5
        for r in f["relations"]:
            t = byid[r["target"]]
            d = geo.geodesic_m(*f["center"], *t["center"])
            assert abs(d - r["distance_m"]) < 0.5  # geodesic between (rounded) centroids
            # recomputed from 6-decimal centres, the sector may only move to a neighbour at a boundary
            step = (geo.BEARINGS.index(r["bearing"]) - geo.BEARINGS.index(geo.bearing8(*f["center"], *t["center"]))) % 8
            assert step in (0, 1, 7) or r["distance_m"] < 2.0  # (rounding moves centres up to ~0.1 m)
            back = [x for x in t["relations"] if x["target"] == f["id"]]
            if back:  # where both directions are listed they agree
                assert back[0]["bearing"] == geo.OPPOSITE[r["bearing"]]
                assert back[0]["distance_m"] == pytest.approx(r["distance_m"], abs=0.11)
    assert all("area_m2" in f and "height_m" in f for f in ssd["polygons"])
    assert all("length_m" in f for f in ssd["lines"])


def test_areas_lengths_and_heights_match_the_truth(city, ssd):
    polys = [g for g in city.scene.geoms if g.geom_type == "Polygon"]
    np.testing.assert_allclose(sorted(f["area_m2"] for f in ssd["polygons"]),
                               sorted(geo.geodesic_area_m2(g) for g in polys), rtol=2e-3)
    by_name = {f["name"]: f for f in ssd["polygons"]}
    for idx, h in city.heights.items():
        assert by_name[city.scene.names[idx]]["height_m"] == pytest.approx(h, abs=1.0)
    street = next(f for f in ssd["lines"])
    assert street["length_m"] == pytest.approx(4 * 120.0, rel=2e-3)


def test_stats_of_a_grid(ssd):
    road = ssd["stats"]["road"]
    assert road["count"] == 10 and road["intersections"] == 21 and road["dead_ends"] == 0 and road["components"] == 1
    shares = ssd["stats"]["landuse_share"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(ssd["stats"]["poi_count"].values()) == len(ssd["points"])


def test_render_respects_budget_and_puts_named_features_first(ssd):
    target = ssd["points"][-1]
    r = render(ssd, budget=400, question=f"What is near {target['name']}?")
    assert r.tokens <= 400 and count_tokens(r.text) == r.tokens
    assert r.included[0] == target["id"] and r.omitted
    assert f"left out {len(r.omitted)}" in r.text
    full = render(ssd, budget=10**6)
    assert not full.omitted and len(full.included) == len(features_by_id(ssd))
    with pytest.raises(ValueError, match="budget"):
        render(ssd, budget=0)


def test_generated_answers_are_readable_from_the_rendering(ssd):
    qs = questions.generate(ssd, per_category=8, seed=3)
    assert {q.category for q in qs} == set(questions.CATEGORIES)
    for q in qs:
        text = render(ssd, budget=1500, question=q.prompt(), entities=q.entities).text
        assert questions.rule_answer(q, text) == q.answer, q.prompt()
    # without the description, the reader cannot answer
    assert all(questions.rule_answer(q, "") is None for q in qs)


def test_parse_choice_and_score():
    assert questions.parse_choice("Answer: C") == "C"
    assert questions.parse_choice("<think>maybe A</think>B) because") == "B"
    assert questions.parse_choice("no idea") is None
    qs = [questions.Question("1", "poi", "?", ["a", "b", "c", "d"], "A"),
          questions.Question("2", "route", "?", ["a", "b", "c", "d"], "B")]
    s = questions.score(qs, ["A", None])
    assert s["accuracy"] == 0.5 and s["accuracy_by_category"] == {"poi": 1.0, "route": 0.0} and s["unanswered"] == 1


def test_bad_input_gets_clear_errors_and_repairs(tmp_path, city):
    empty = tmp_path / "empty.geojson"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        readers.read([empty])
    proj = tmp_path / "metric.geojson"
    proj.write_text(json.dumps({"type": "Point", "coordinates": [500000.0, 3400000.0]}))
    with pytest.raises(ValueError, match="--crs"):
        readers.read([proj])
    assert readers.read([proj], crs="EPSG:32650").geoms[0].x == pytest.approx(117.0, abs=0.01)
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    bad = tmp_path / "bowtie.geojson"
    bad.write_text(json.dumps(bowtie))
    with pytest.warns(UserWarning, match="repaired 1 invalid"):
        scene = readers.read([bad])
    assert shapely.is_valid(scene.geoms[0]) and scene.geoms[0].area > 0
    with pytest.raises(ValueError, match="unknown input type"):
        (tmp_path / "x.dat").write_text("1")
        readers.read([tmp_path / "x.dat"])
    far = readers.Scene(list(city.scene.geoms), list(city.scene.names), list(city.scene.fclass),
                        list(city.scene.props))
    far.cloud = city.scene.cloud + np.array([1e5, 0, 0])
    far.cloud_crs = city.crs
    with pytest.raises(ValueError, match="does not overlap"):
        describe(far)


def test_control_points_align_a_shifted_cloud(city, ssd):
    shifted = readers.Scene(list(city.scene.geoms), list(city.scene.names), list(city.scene.fclass),
                            list(city.scene.props))
    shift = np.array([-1234.5, 987.0])
    shifted.cloud = city.scene.cloud + np.array([*shift, 0])
    ctrl_map = np.array([[0, 0], [100, 0], [0, 100], [50, 70]], float) + city.scene.cloud[0, :2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = describe(shifted, cloud_control=(ctrl_map + shift, ctrl_map))
    assert [f["height_m"] for f in out["polygons"]] == [f["height_m"] for f in ssd["polygons"]]


def test_mixed_crs_inputs_land_in_one_frame(city, files, tmp_path):
    """A legacy-CRS GeoJSON in web Mercator and a lon/lat CSV describe the same places."""
    import pyproj

    pts = [(g, n) for g, n in zip(city.scene.geoms, city.scene.names) if g.geom_type == "Point"]
    merc = geo.transform(np.array([g for g, _ in pts], dtype=object), geo.WGS84, pyproj.CRS.from_epsg(3857))
    feats = [{"type": "Feature", "geometry": shapely.geometry.mapping(g), "properties": {"name": n + " M"}}
             for g, (_, n) in zip(merc, pts)]
    path = tmp_path / "merc.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::3857"}}, "features": feats}))
    scene = readers.read([path, files["csv"]])
    out = describe(scene)
    by_name = {f["name"]: f for f in out["points"]}
    for _, n in pts:
        a, b = by_name[n + " M"], by_name[n]
        assert geo.geodesic_m(*a["center"], *b["center"]) < 0.2  # same place, whichever CRS it came in
