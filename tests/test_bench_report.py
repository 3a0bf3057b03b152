"""The README's bench table from committed result files, and the benches' shared arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.bench import common, report
from runtime.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

README = f"""# title

## Benchmarks

Some words.

{report.BEGIN}
| old | table |
{report.END}

More words.
"""


def _doc(bench: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"bench": bench, "command": f"commandpost bench {bench} --json --scale 1.0",
            "commit": "abc1234", "dirty": False, "machine": "vm: 2 cpu, 24 GiB",
            "result": result, **extra}


def _write(folder: Path, doc: dict[str, Any]) -> None:
    (folder / f"{doc['bench']}.json").write_text(json.dumps(doc), encoding="utf-8")


STARTUP = {"startup_s": 12.34, "online_s": 17.5, "memory_mb": 1850.2, "entities": 2107,
           "state_loaded": True, "twin_fields": 87.5, "hosts": 8, "spares": 1,
           "checkpoint_kb_mean": 2.9, "broker": "mosquitto", "machine": "vm", "left_out": []}
DEMO = {"memory_mb": 1900.0, "runtime_cpu": 0.8, "broker_cpu": 0.05, "simulator_cpu": 0.4,
        "entities": 2107, "online": 2107, "window_s": 60.0, "broker": "mosquitto",
        "left_out": ["admin web"]}


def test_the_table_shows_each_bench_s_figures_in_order(tmp_path: Path) -> None:
    _write(tmp_path, _doc("demo", DEMO))
    _write(tmp_path, _doc("startup", STARTUP, dirty=True))
    _write(tmp_path, _doc("zeta", {"n": 3, "nested": {"a": 1}, "machine": "vm"}))
    docs = report.load_results(tmp_path)
    assert [d["bench"] for d in docs] == ["startup", "demo", "zeta"]
    lines = report.table(docs).splitlines()
    assert lines[0] == "| bench | figures | run on | commit |"
    assert len(lines) == 2 + 3
    startup = lines[2]
    assert "`commandpost bench startup --json --scale 1.0`" in startup
    assert "`startup_s` 12.34, `online_s` 17.5, `memory_mb` 1850.2" in startup
    assert "`state_loaded` true" in startup
    assert "checkpoint_kb_mean" not in startup  # not one of the table's figures
    assert "abc1234 (modified)" in startup and "broker mosquitto" in startup
    assert "without admin web" in lines[3]
    # A bench the table does not know shows its scalar figures only.
    assert "`n` 3" in lines[4] and "nested" not in lines[4] and "`machine`" not in lines[4]


def test_nested_figures_are_reached_by_path() -> None:
    result = {"lag_ms": {"p50": 1.5, "p99": 9.25}, "capacity": {"limited_by": "runtime"},
              "lost": 0}
    shown = dict(report.figures("ingest", result))
    assert shown == {"lost": "0", "lag_ms.p50": "1.5", "lag_ms.p99": "9.25",
                     "capacity.limited_by": "runtime"}


def test_the_readme_section_between_the_markers_is_replaced(tmp_path: Path) -> None:
    _write(tmp_path, _doc("startup", STARTUP))
    docs = report.load_results(tmp_path)
    out = report.render_readme(README, docs)
    assert "| old | table |" not in out
    assert out.startswith("# title\n\n## Benchmarks\n\nSome words.\n\n")
    assert out.endswith(f"{report.END}\n\nMore words.\n")
    assert report.table(docs) in out
    assert report.render_readme(out, docs) == out  # idempotent


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ConfigError, match="bench-table"):
        report.render_readme("# no markers\n", [])
    with pytest.raises(ConfigError):
        report.render_readme(f"{report.END}\n{report.BEGIN}\n", [])


def test_a_file_that_is_not_a_result_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"bench": "x"}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json.*missing command"):
        report.load_results(tmp_path)
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        report.load_results(tmp_path)


def test_main_checks_and_rewrites(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    _write(results, _doc("startup", STARTUP))
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    args = ["--readme", str(readme), "--results", str(results)]
    assert report.main([*args, "--check"]) == 1
    assert report.main(args) == 0
    assert "`startup_s` 12.34" in readme.read_text(encoding="utf-8")
    assert report.main([*args, "--check"]) == 0


def test_a_saved_result_names_bench_command_commit_and_machine(tmp_path: Path) -> None:
    path = tmp_path / "out" / "startup.json"
    report.save_result(str(path), "startup", dict(STARTUP),
                       "bench startup --json --output out/startup.json --scale 1.0")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["bench"] == "startup"
    assert doc["command"] == "commandpost bench startup --json --scale 1.0"
    assert doc["machine"] == "vm"
    assert doc["commit"] and isinstance(doc["dirty"], bool)
    assert doc["result"] == STARTUP
    assert report.reproducible_command(["bench", "demo", "--output=x.json"]) == \
        "commandpost bench demo"


def test_the_committed_readme_table_matches_the_committed_results() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    expected = report.render_readme(readme, report.load_results(report.RESULTS_DIR))
    assert readme == expected, "the README's bench table is stale: run `make bench-table`"


# -- the benches' shared arithmetic ---------------------------------------------------------
def test_memory_by_role_counts_a_process_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {1: 100.0, 2: 50.0, 3: 25.0, 4: 12.5}
    monkeypatch.setattr(common, "pss_mb", lambda pids: sum(sizes[p] for p in pids))
    got = common.pss_by_role({"runtime": {1, 2}, "broker": {3}, "simulator": {2, 4}})
    assert got == {"runtime": 150.0, "broker": 25.0, "simulator": 12.5, "total": 187.5}


def test_cpu_meter_gives_cores_per_role(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = {1: 10.0, 2: 5.0, 3: 1.0}
    clock = [100.0]
    monkeypatch.setattr(common, "cpu_seconds", lambda pids: sum(cpu[p] for p in pids))
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    meter = common.CpuMeter({"runtime": {1, 2}, "broker": {3}})
    meter.start()
    cpu.update({1: 16.0, 2: 7.0, 3: 1.5})
    clock[0] += 10.0
    cores = meter.stop()
    assert meter.window_s == 10.0
    assert cores == pytest.approx({"runtime": 0.8, "broker": 0.05})


def test_the_priority_latency_row_shows_the_flood_beside_idle() -> None:
    phase = {"n": 400, "p50_ms": 12.5, "p99_ms": 30.25, "max_ms": 41.0, "misses": 0}
    result = {"idle": phase, "idle_traced": phase, "city": phase,
              "flood": {**phase, "p99_ms": 55.5, "misses": 1, "offered_msgs_per_s": 3998.7,
                        "flooded_devices": 200},
              "tracing_overhead_ms": {"p50": 0.1, "p99": 0.4}, "flood_p99_ratio": 1.83}
    shown = dict(report.figures("priority-latency", result))
    assert shown["flood.p99_ms"] == "55.5" and shown["flood.misses"] == "1"
    assert shown["flood.n"] == "400" and shown["flood.p50_ms"] == "12.5"
    assert shown["flood.offered_msgs_per_s"] == "3998.7"
    assert shown["idle.p99_ms"] == "30.25" and shown["flood_p99_ratio"] == "1.83"
    assert "flood.flooded_devices" not in shown
    assert list(shown).index("idle.p99_ms") < list(shown).index("flood.p99_ms")
