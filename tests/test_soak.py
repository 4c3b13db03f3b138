"""A short soak and a kill -9 fault run of the real server (bench/soak.py), with its targets.

``make soak`` runs the long versions (10 minutes at 32 clients, then a fault run); these keep
the same checks at CI size: 8 clients for ~10 s, and a kill -9 after ~4 s of load.
"""
from __future__ import annotations

import json

import pytest

from bench import soak

CLIENTS = 8


def options(tmp, **more) -> soak.Options:
    """CI-sized options; outputs go to ``tmp``, never to bench/."""
    settings = {"clients": CLIENTS, "duration": 10, "warmup": 4, "progress_every": 5, **more}
    return soak.Options(results_md=tmp / "RESULTS.md", results_json=tmp / "soak.json",
                        **settings)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("soak-out")
    (out / "RESULTS.md").write_text("# Benchmark results\n\nmeasured elsewhere\n")
    return out


@pytest.fixture(scope="module")
def clean(outputs) -> soak.Report:
    return soak.run(options(outputs))


@pytest.fixture(scope="module")
def fault(outputs, clean) -> soak.Report:  # after the clean run: one server at a time
    return soak.run(options(outputs, duration=60, kill_after=4))


def target(report: soak.Report, name: str) -> soak.Target:
    return next(t for t in report.targets if t.name == name)


def test_clean_soak_ran_the_whole_mix(clean):
    assert clean.mode == "soak" and clean.requests > 50
    assert set(clean.statuses) == {"raw", "json", "batch", "bad", "feedback"}, clean.statuses
    assert set(clean.statuses["bad"]) <= {"400", "415"}, clean.statuses["bad"]
    assert clean.statuses["feedback"].get("200", 0) > 0, clean.statuses["feedback"]
    assert clean.connection_errors == 0


def test_clean_soak_valid_requests_never_get_a_5xx(clean):
    assert clean.valid_5xx == 0, clean.statuses
    for kind in ("raw", "json", "batch"):
        assert set(clean.statuses[kind]) == {"200"}, (kind, clean.statuses[kind])
    assert target(clean, "zero 5xx for valid requests").met


def test_clean_soak_loses_no_input_log_record(clean):
    audit = clean.audit
    assert audit["integrity"] == "ok"
    assert audit["predictions_200"] > 0 and audit["records_expected"] >= audit["predictions_200"]
    assert audit["lost_records"] == 0 and audit["lost_requests"] == 0, audit
    assert audit["db_records"] >= audit["records_expected"]
    assert clean.server_exit_code == 0  # SIGTERM is a clean stop


def test_clean_soak_rss_stays_flat_after_warm_up(clean):
    assert all(clean.rss_mib.values()), clean.rss_mib
    assert clean.rss_growth_percent < soak.RSS_GROWTH_LIMIT, clean.rss_mib
    assert clean.met, [t for t in clean.targets if not t.met]


def test_fault_run_keeps_the_input_log_sound(fault):
    audit = fault.audit
    assert fault.mode == "fault" and audit["predictions_200"] > 0
    assert fault.valid_5xx == 0, fault.statuses
    assert audit["integrity"] == "ok"
    assert audit["temp_files_after_restart"] == 0
    assert audit["missing_image_files"] == 0 and audit["records_without_image_row"] == 0
    assert audit["restart_logged"] is True


def test_fault_run_loses_at_most_a_queue_of_records(fault):
    queue_size = fault.parameters["queue_size"]
    assert queue_size == soak.default_queue_size()
    assert 0 <= fault.audit["lost_requests"] <= queue_size, fault.audit
    assert target(fault, "200 predictions whose records were lost").met
    assert fault.met, [t for t in fault.targets if not t.met]


def test_both_runs_write_their_own_sections(outputs, clean, fault):
    text = (outputs / "RESULTS.md").read_text()
    assert text.startswith("# Benchmark results\n\nmeasured elsewhere")  # left alone
    for name in ("soak", "soak-fault"):
        assert text.count(f"<!-- {name} -->") == 1 and text.count(f"<!-- /{name} -->") == 1
    data = json.loads((outputs / "soak.json").read_text())
    assert data["soak"]["requests"] == clean.requests
    assert data["fault"]["audit"]["lost_requests"] == fault.audit["lost_requests"]
