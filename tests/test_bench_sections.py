"""bench/sections.py: each benchmark replaces only its own section of RESULTS.md."""
from __future__ import annotations

from bench import run as bench_run
from bench import sections


def test_a_rerun_replaces_its_section_and_a_full_rewrite_keeps_it(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n")
    sections.write_section(path, "soak", "old figures")
    sections.write_section(path, "fairness", "flood figures")
    sections.write_section(path, "soak", "new figures")
    text = path.read_text()
    assert "old figures" not in text and text.count("<!-- soak -->") == 1
    assert text.index("new figures") < text.index("flood figures")  # replaced in place
    rewritten = bench_run.keep_marked_sections("# Benchmark results\n\nfresh numbers\n", path)
    assert "fresh numbers" in rewritten and "new figures" in rewritten
    assert "flood figures" in rewritten and rewritten.count("<!-- /soak -->") == 1


def run_of(requests_per_s: float, p50_ms: float, cpu_ms: float = 1.0) -> dict:
    return {"latency": {"p50_ms": p50_ms, "p99_ms": 2 * p50_ms, "non200": 0},
            "load": {"requests_per_s": requests_per_s, "p50_ms": 9.0, "p99_ms": 30.0,
                     "non200": 1},
            "cpu_ms_per_request": cpu_ms}


def test_hot_path_ratios_are_taken_per_round_then_the_median():
    from bench import hotpath
    rates = [(1000, 500, 520), (1500, 600, 700), (800, 480, 400)]  # floor, service, log off
    rounds = [{hotpath.FLOOR: run_of(floor, 0.5), hotpath.SERVICE: run_of(service, 1.5),
               hotpath.LOG_OFF: run_of(off, 1.4), hotpath.TWO_WORKERS: run_of(2 * service, 2)}
              for floor, service, off in rates]
    summary = hotpath.summarise(rounds)
    service = summary["servers"][hotpath.SERVICE]
    # service/floor per round 0.5, 0.4, 0.6 -> 0.5; on/off 0.962, 0.857, 1.2 -> 0.962
    assert service["share_of_floor"] == 0.5 and summary["inputlog_share"] == 0.962
    assert service["p50_over_floor_ms"] == 1.0 and service["errors"] == 3
    assert summary["servers"][hotpath.TWO_WORKERS]["share_of_floor"] == 1.0
    judged = []
    hotpath.targets(summary, lambda key, rule, measured, required, unit, at_most=False:
                    judged.append((rule, measured >= required if not at_most
                                   else measured <= required)))
    met = dict(judged)
    assert [v for k, v in met.items() if "no errors" in k] == [False]
    assert [v for k, v in met.items() if "2 workers" in k] == [True]
    assert [v for k, v in met.items() if "one process >=" in k] == [False]


def test_hot_path_also_shows_each_server_against_the_one_cpu_floor():
    from bench import hotpath
    rounds = [{hotpath.FLOOR: run_of(floor, 0.5), hotpath.FLOOR_ONE_CPU: run_of(one_cpu, 0.5),
               hotpath.SERVICE: run_of(service, 1.5), hotpath.LOG_OFF: run_of(service, 1.4),
               hotpath.TWO_WORKERS: run_of(2 * service, 2)}
              for floor, one_cpu, service in [(1000, 1200, 600), (1000, 1100, 660)]]
    summary = hotpath.summarise(rounds)
    service = summary["servers"][hotpath.SERVICE]
    assert service["share_of_floor"] == 0.63 and service["share_of_floor_one_cpu"] == 0.55
    assert summary["servers"][hotpath.FLOOR_ONE_CPU]["share_of_floor"] == 1.15
    assert any("0.550 of the one-CPU floor" in row[3] for row in hotpath.rows(summary))


def test_hot_path_takes_the_request_layer_as_the_floor_less_the_bare_floor_per_round():
    from bench import hotpath
    cpu = [(0.6, 0.2), (0.8, 0.4), (1.0, 0.3)]  # floor, bare floor: ms of CPU per request
    rounds = [{hotpath.FLOOR: run_of(1000, 0.5, floor), hotpath.FLOOR_BARE: run_of(2500, 0.2, bare),
               hotpath.SERVICE: run_of(500, 1.5), hotpath.LOG_OFF: run_of(520, 1.4),
               hotpath.TWO_WORKERS: run_of(700, 2)} for floor, bare in cpu]
    summary = hotpath.summarise(rounds)
    # per round: 0.4, 0.4, 0.7 ms -> 0.4; shares 0.667, 0.5, 0.7 -> 0.667
    assert summary["request_layer"] == {"cpu_ms_per_request": 0.4, "share_of_floor_cpu": 0.667}
    rows = {what: (value, notes) for _, what, value, notes in hotpath.rows(summary)}
    assert rows["CherryPy's request layer, per floor request"][0] == "0.400 ms of CPU"
    assert rows["CherryPy's request layer, per floor request"][1].startswith("67% of the floor")
    assert summary["servers"][hotpath.FLOOR_BARE]["share_of_floor"] == 2.5
