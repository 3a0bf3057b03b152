"""The benches' arithmetic on synthetic data: percentiles, histograms, counting at both ends."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.sim.control import DeviceCounters
from runtime.bench.common import latency_summary, percentile
from runtime.bench.counting import tally
from runtime.metrics import BOUNDS_S, Histogram


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1.0], 99) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], math.nan)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_lies_within_the_data(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert min(values) <= p <= max(values)


def test_latency_summary_is_in_milliseconds() -> None:
    s = latency_summary([0.001] * 99 + [0.5])
    assert s["p50"] == 1.0 and s["max"] == 500.0
    assert 1.0 <= (s["p99"] or 0) <= 500.0
    assert latency_summary([]) == {"p50": None, "p99": None, "max": None}


def test_histogram_quantiles_are_bucket_bounds_capped_at_max() -> None:
    h = Histogram()
    for _ in range(99):
        h.observe(0.002)
    h.observe(0.9)
    assert h.count == 100
    assert 0.002 <= h.quantile(0.5) <= 0.002 * 1.26
    assert h.quantile(1.0) == pytest.approx(0.9)
    assert h.max == 0.9
    h.observe(-1.0)  # clock skew counts as zero
    h.observe(math.inf)  # ignored
    assert h.count == 101 and h.quantile(0.0) <= BOUNDS_S[0]
    with pytest.raises(ValueError):
        Histogram().quantile(0.5)


def test_histogram_window_is_the_difference_of_two_snapshots() -> None:
    h = Histogram()
    for v in (0.001, 0.01, 0.1):
        h.observe(v)
    before = Histogram.from_dict(h.to_dict())
    for v in (0.5, 0.5, 0.004):
        h.observe(v)
    window = h.minus(before)
    assert window.count == 3
    assert window.sum == pytest.approx(1.004)
    assert window.max == 0.5
    assert window.quantile(0.5) >= 0.5 * 0.79
    merged = Histogram()
    merged.merge(before)
    merged.merge(window)
    assert merged.counts == h.counts
    with pytest.raises(ValueError):
        before.minus(h)  # not an earlier snapshot
    with pytest.raises(ValueError):
        Histogram.from_dict({"counts": [1, 2]})


def test_device_counters_count_samples_and_writes() -> None:
    c = DeviceCounters("mqtt", "bus")
    for seq in (5, 6, 7):
        c.sample(seq, 6)
    c.write(True)
    c.write(False)
    assert (c.emitted, c.first_seq, c.last_seq, c.points) == (3, 5, 7, 18)
    assert (c.writes, c.actuations, c.repeats) == (2, 1, 1)


def _src(proto: str, emitted: int, first: int | None, last: int | None,
         points: int = 0, **extra: int) -> dict[str, object]:
    return {"protocol": proto, "emitted": emitted, "first_seq": first, "last_seq": last,
            "points": points, "dropped": extra.get("dropped", 0), "late": extra.get("late", 0)}


def test_tally_counts_loss_per_device_from_both_ends() -> None:
    before = {"a": _src("mqtt", 10, 1, 10, 60), "b": _src("mqtt", 10, 1, 10, 60),
              "c": _src("modbus", 3, 1, 3, 30), "d": _src("opcua", 0, None, None)}
    after = {"a": _src("mqtt", 110, 1, 110, 660), "b": _src("mqtt", 60, 1, 60, 360, dropped=5),
             "c": _src("modbus", 13, 1, 13, 130), "d": _src("opcua", 4, 1, 4, 4)}
    sink0 = {"a": {"samples": 10, "points": 60}, "b": {"samples": 10, "points": 60},
             "c": {"samples": 3, "points": 30}, "d": {"samples": 0, "points": 0}}
    sink1 = {"a": {"samples": 110, "points": 660}, "b": {"samples": 55, "points": 330},
             "c": {"samples": 14, "points": 140}, "d": {"samples": 4, "points": 4}}
    t = tally(before, after, sink0, sink1)
    mqtt, modbus, opcua = t.by_protocol["mqtt"], t.by_protocol["modbus"], t.by_protocol["opcua"]
    assert (mqtt.emitted, mqtt.applied, mqtt.lost, mqtt.dropped) == (150, 145, 5, 5)
    assert mqtt.lossy_devices == ["b"] and mqtt.points_emitted == 900 and mqtt.points == 870
    # c applied one more than it emitted: a duplicate, not netted against b's loss.
    assert (modbus.emitted, modbus.applied, modbus.lost, modbus.duplicates) == (10, 11, 0, 1)
    # d's first sample is in the window: 1..4 is four samples.
    assert (opcua.emitted, opcua.lost, opcua.numbering_errors) == (4, 0, 0)
    assert t.total("lost") == 5 and t.total("emitted") == 164


def test_tally_flags_a_sequence_range_that_disagrees_with_the_count() -> None:
    before = {"a": _src("mqtt", 10, 1, 10)}
    after = {"a": _src("mqtt", 20, 1, 25)}  # ten counted, fifteen numbers used
    t = tally(before, after, {"a": {"samples": 10}}, {"a": {"samples": 20}})
    assert t.by_protocol["mqtt"].numbering_errors == 1


def test_tally_counts_a_device_without_an_entity_as_lost_and_adds_extra_sources() -> None:
    before = {"a": _src("mqtt", 0, None, None), "x": _src("mqtt", 0, None, None)}
    after = {"a": _src("mqtt", 5, 1, 5), "x": _src("mqtt", 3, 1, 3)}
    gen0 = {"a": _src("mqtt", 0, None, None)}
    gen1 = {"a": _src("mqtt", 100, 1_000_000_001, 1_000_000_100)}
    t = tally(before, after, {"a": {"samples": 0}}, {"a": {"samples": 105}},
              extra_sources=[(gen0, gen1)])
    mqtt = t.by_protocol["mqtt"]
    assert (mqtt.emitted, mqtt.applied, mqtt.lost) == (108, 105, 3)
    assert mqtt.lossy_devices == ["x"] and mqtt.numbering_errors == 0
