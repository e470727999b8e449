"""SpatialLLM (arXiv 2505.12703): urban spatial intelligence from structured scene descriptions.

Raw urban data (GeoJSON, OpenStreetMap XML, shapefiles, CSV points, point clouds) is turned into a
structured scene description (SSD, JSON), rendered to compact text within a token budget, and put into
an LLM's context for zero-shot analysis. Question generators with exact answers make accuracy
measurable offline. Modules: `geo` (CRS, bearings, geodesic distances), `readers`, `city` (synthetic
city), `ssd` (the description), `render`, `questions`, `ask` (LLM backends, prompts), `plot`, `cli`.
"""
