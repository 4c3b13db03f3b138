"""Route templates: the one name of each route, for metrics, logs and access policies.

``/mnist/label/123`` and ``/v1/models/<name>/predict`` must not make one time series (or
one policy entry) per index or name.
"""
from __future__ import annotations

import re

# Route templates, so that /mnist/label/123 and /v1/models/<name>/predict do not make one
# time series per index or name. Anything else is "unmatched" (unknown URLs, probes).
EXACT_ROUTES = frozenset({
    "/", "/result", "/status", "/healthz", "/readyz", "/metrics", "/openapi.json",
    "/recognize", "/mnist/classify", "/v1/models", "/v1/predict", "/v1/feedback",
    "/feedback_form",
})
PATTERN_ROUTES = (
    (re.compile(r"/v1/models/[^/]+"), "/v1/models/{name}"),
    (re.compile(r"/v1/models/[^/]+/(predict|reload)"), "/v1/models/{name}/\\1"),
    (re.compile(r"/mnist/(image|label|classify)/[^/]+"), "/mnist/\\1/{idx}"),
    (re.compile(r"/static/.+"), "/static/{file}"),
)
UNMATCHED = "unmatched"


def route_template(path: str) -> str:
    path = path.rstrip("/") or "/"
    if path in EXACT_ROUTES:
        return path
    for pattern, template in PATTERN_ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return match.expand(template)
    return UNMATCHED
