"""What ``/openapi.json`` says about the routes that parse their own input.

The search routes read their form or query string by hand (``safety.search_params``: one-line 422s,
empty fields meaning "not given", size limits before the body is read), so FastAPI cannot infer their
parameters; they are declared here for the OpenAPI document that ``/docs`` renders.
"""

from __future__ import annotations

from typing import Any

_FILTERS: list[dict[str, Any]] = [
    {"name": "top_k", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
     "description": "Frames to return."},
    {"name": "min_score", "schema": {"type": "number", "minimum": -1, "maximum": 1},
     "description": "Leave out frames scoring below this (the score is the cosine)."},
    {"name": "backbone", "schema": {"type": "string"},
     "description": "One of the served backbones (default: the first)."},
    {"name": "video", "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": True,
     "description": "Only frames of these videos (the manifest's video values); repeat for several."},
]

_ERROR = {"description": "A one-line reason", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}

_ERRORS = {"413": _ERROR, "415": _ERROR, "422": _ERROR, "503": {**_ERROR, "description": "Busy: retry after the "
                                                                   "Retry-After header's seconds"}}

UPLOAD_SEARCH: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "The picture: JPEG, PNG, WebP, GIF or BMP."},
                       **{p["name"]: {**p["schema"], "description": p["description"]} for p in _FILTERS}}}}}},
    "responses": _ERRORS,
}

FRAME_SEARCH: dict[str, Any] = {
    "parameters": [{"name": "frame_id", "in": "query", "required": True, "schema": {"type": "string"},
                    "description": "A frame of the dataset (the manifest's frame_id): its image is the query."}]
    + [{**p, "in": "query"} for p in _FILTERS],
    "responses": {**_ERRORS, "404": _ERROR},
}
