"""Route templates keep metric labels and access policies to one entry per route."""
from __future__ import annotations

import pytest

from service.web.access import ADMIN, FORM, HEALTH, KEY, METRICS, OPEN
from service.web.routes import ROUTES, policy_for, route_template


@pytest.mark.parametrize("path, template", [
    ("/", "/"), ("/v1/models", "/v1/models"), ("/v1/models/", "/v1/models"),
    ("/v1/models/digits-cnn", "/v1/models/{name}"),
    ("/v1/models/anything/predict", "/v1/models/{name}/predict"),
    ("/v1/models/digits-rnn/reload", "/v1/models/{name}/reload"),
    ("/mnist/label/123", "/mnist/label/{idx}"), ("/mnist/image/9", "/mnist/image/{idx}"),
    ("/mnist/classify/42", "/mnist/classify/{idx}"), ("/mnist/classify", "/mnist/classify"),
    ("/static/app.js", "/static/{file}"), ("/openapi.json", "/openapi.json"),
    ("/wp-admin/login.php", "unmatched"), ("/v1/models/a/b/c", "unmatched"),
    ("/v1/models/digits-cnn:predict", "/v1/models/{name}:predict"),
    ("/v1/models/m/versions/2:classify", "/v1/models/{name}/versions/{version}:classify"),
    ("/v1/models/m/labels/stable", "/v1/models/{name}/labels/{label}"),
    ("/v1/models/m:regress", "unmatched"), ("/v2/models/m/versions/3/infer",
                                            "/v2/models/{name}/versions/{version}/infer"),
])
def test_route_templates_bound_label_cardinality(path, template):
    assert route_template(path) == template


@pytest.mark.parametrize("path, policy", [
    ("/v1/models", KEY), ("/v1/anything", KEY), ("/v1", KEY),
    ("/v1/models/digits-cnn/reload", ADMIN), ("/recognize", KEY), ("/mnist/classify/3", KEY),
    ("/mnist/image/3", OPEN), ("/healthz", HEALTH), ("/metrics", METRICS), ("/result", FORM),
    ("/", OPEN), ("/openapi.json", OPEN), ("/static/app.js", OPEN), ("/v1x", OPEN),
    ("/v2", HEALTH), ("/v2/health/ready", HEALTH), ("/v2/models/m/infer", KEY),
    ("/v2/models/m", KEY), ("/v1/models/m:predict", KEY), ("/v1/models/m/metadata", KEY),
])
def test_each_route_has_one_access_policy(path, policy):
    assert policy_for(path) == policy


def test_each_route_is_declared_once():
    templates = [(route.template, method) for route in ROUTES for method in route.methods]
    assert len(templates) == len(set(templates))
    assert len({route.template for route in ROUTES}) == len(ROUTES)
