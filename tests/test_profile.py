"""Device profiles: loading, validation with line numbers, register codec."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.signal_plan import table_fields
from devices.profile import (
    FieldSpec,
    builtin_names,
    builtin_profile,
    load_profile,
    parse_profile,
)
from runtime.errors import ConfigError, ProtocolError, RejectedError

MODBUS_NAMES = ("traffic_controller", "lighting_cabinet", "access_terminal")


def test_builtin_modbus_profiles_load() -> None:
    names = builtin_names()
    for name in MODBUS_NAMES:
        assert name in names
        profile = builtin_profile(name)
        assert profile.name == name and profile.protocol == "modbus"
        assert profile.field("seq").type == "u32"
        assert profile.liveness_misses == 3
        # A cabinet behind a field gateway gets 1 s to answer; a controller on the LAN 0.5 s.
        assert profile.timeout_s == (1.0 if name == "lighting_cabinet" else 0.5)
    assert builtin_profile("traffic_controller").poll_interval_s == 0.5
    assert builtin_profile("lighting_cabinet").poll_interval_s == 5.0
    assert builtin_profile("traffic_controller") is builtin_profile("traffic_controller")


def test_traffic_controller_fields() -> None:
    p = builtin_profile("traffic_controller")
    # Appended, never reordered: a choice's index is its value on the wire.
    assert p.field("mode").choices == ("auto", "manual", "flashing", "off", "all_red",
                                       "start_flashing", "start_all_red")
    assert p.field("mode").reconcile == "alarm"
    assert p.field("plan").reconcile == "reapply"
    assert (p.field("plan").min, p.field("plan").max) == (1.0, 32.0)
    assert set(p.writable()) == {"plan", "mode"}
    assert "phases" in p.description and "NTCIP 1211" in p.description
    # The plan table's four slots, one per stride, each a signal plan's registers.
    table = p.block("plan_table")
    assert (table.count, table.stride) == (4, 28)
    assert [f.name for f in table.fields] == list(table_fields())
    assert all(f.writable for f in table.fields)
    # Signal priority: the status after the plan table, the request block after it.
    assert [(f.name, f.address, f.type) for f in p.fields if f.name.startswith("prio_")] == [
        ("prio_status_id", 122, "u32"), ("prio_status", 124, "u16"),
        ("prio_reason", 125, "u16"), ("prio_active", 126, "u16")]
    assert p.field("prio_status").choices == ("idle", "queued", "granted", "refused", "served",
                                              "expired", "cleared")
    assert p.field("prio_reason").choices == (
        "none", "mode", "no_phase", "pedestrian_min", "min_green", "max_green",
        "max_extension", "busy", "deadline", "unknown_id", "bad_request", "duplicate")
    request = p.block("prio_request")
    assert (request.base, request.stride, request.count) == (130, 8, 1)
    assert [(f.name, f.address, f.type) for f in request.fields] == [
        ("prio_id", 0, "u32"), ("prio_command", 2, "u16"), ("prio_approach", 3, "u16"),
        ("prio_type", 4, "u16"), ("prio_eta_s", 5, "u16"), ("prio_deadline_s", 6, "u16"),
        ("prio_max_extension_s", 7, "u16")]
    assert request.field("prio_command").choices == ("none", "request", "checkout", "cancel")
    assert request.field("prio_type").choices == ("extension", "early_green")
    assert (request.field("prio_approach").min, request.field("prio_approach").max) == (0, 8)
    # A command register: never reconciled, never written again after a restart.
    assert {f.reconcile for f in request.fields} == {"never"}
    assert all(f.writable for f in request.fields)
    # Two reads (125 registers at most each) cover the whole controller.
    assert p.register_span({}) == (0, 138)


def test_a_priority_request_encodes_whole_in_one_range() -> None:
    p = builtin_profile("traffic_controller")
    request = {"prio_id": 0x12345, "prio_command": "request", "prio_approach": 3,
               "prio_type": "early_green", "prio_eta_s": 20, "prio_deadline_s": 60,
               "prio_max_extension_s": 10}
    assert p.encode_block("prio_request", 0, request) == (130, [1, 0x2345, 1, 3, 1, 20, 60, 10])
    for bad, code in ((dict(request, prio_approach=9), "out_of_range"),
                      (dict(request, prio_command="stop"), "bad_value"),
                      ({k: v for k, v in request.items() if k != "prio_type"}, "bad_value"),
                      (dict(request, phase=1), "bad_value")):
        with pytest.raises(RejectedError) as err:
            p.encode_block("prio_request", 0, bad)
        assert err.value.code == code
    with pytest.raises(RejectedError) as err:
        p.encode_block("nope", 0, request)
    assert err.value.code == "unknown_field"
    # A lamp holds read-only registers: it is never written whole.
    light = builtin_profile("lighting_cabinet")
    with pytest.raises(RejectedError) as err:
        light.encode_block("lamp", 0, {f.name: 0 for f in light.block("lamp").fields})
    assert err.value.code == "read_only"
    # Fields with a gap between them cannot go in one request.
    gap = parse_profile(
        '[profile]\nname = "x"\nprotocol = "modbus"\n[[field]]\nname = "seq"\n'
        'address = 0\ntype = "u32"\n[[block]]\nname = "b"\nbase = 10\nstride = 4\n'
        'count = 1\n[[block.field]]\nname = "a"\naddress = 0\ntype = "u16"\n'
        'writable = true\nreconcile = "never"\n[[block.field]]\nname = "c"\naddress = 2\n'
        'type = "u16"\nwritable = true\nreconcile = "never"\n', "gap.toml")
    with pytest.raises(ConfigError, match="gap at register 11"):
        gap.encode_block("b", 0, {"a": 1, "c": 2})


def test_never_is_a_reconcile_policy_of_writable_fields() -> None:
    text = ('[profile]\nname = "x"\nprotocol = "modbus"\n[[field]]\nname = "seq"\n'
            'address = 0\ntype = "u32"\n[[field]]\nname = "cmd"\naddress = 2\ntype = "u16"\n'
            'writable = true\nreconcile = "never"\n')
    assert parse_profile(text, "t.toml").field("cmd").reconcile == "never"
    assert FieldSpec("a", "u16", writable=True, reconcile="never").reconcile == "never"
    with pytest.raises(ConfigError, match="reapply, alarm, never"):
        parse_profile(text.replace("never", "sometimes"), "t.toml")


def test_lighting_block_count_follows_attrs() -> None:
    p = builtin_profile("lighting_cabinet")
    lamp = p.block("lamp")
    assert lamp.count == 30 and lamp.count_attr == "points"
    assert p.count("lamp", {}) == 30
    assert p.count("lamp", {"points": 4}) == 4
    first, count = p.register_span({"points": 4})
    assert first == 0 and count == lamp.base + 3 * lamp.stride + 6  # type: ignore[operator]
    assert lamp.field("dim").unit == "%" and lamp.field("power_w").scale == 0.1
    with pytest.raises(ConfigError):
        p.count("lamp", {"points": -1})


def test_unknown_builtin_and_non_modbus_helpers() -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        builtin_profile("nope")
    mqtt = parse_profile(
        '[profile]\nname = "x"\nprotocol = "mqtt"\n[[field]]\nname = "seq"\ntype = "i32"\n', "m"
    )
    assert mqtt.field("seq").key == "seq"
    with pytest.raises(ConfigError, match="not modbus"):
        mqtt.register_span({})


def test_decode_lighting_registers() -> None:
    p = builtin_profile("lighting_cabinet")
    attrs = {"points": 2}
    first, count = p.register_span(attrs)
    regs = [0] * count
    regs[0:5] = [1, 0, 1, 0x0001, 0x0002]
    base, stride = 16, 8
    regs[base : base + 6] = [1, 40, 405, 0, 77, 0]
    regs[base + stride : base + stride + 6] = [0, 100, 0, 1, 2, 3]
    out = p.decode_registers(first, regs, attrs)
    assert out["mains_ok"] is True and out["door_open"] is False and out["earth_fault"] is True
    assert out["seq"] == 0x10002
    assert out["lamp"][0] == {
        "on": True,
        "dim": 40,
        "power_w": pytest.approx(40.5),
        "energy_wh": 77,
        "fault_bits": 0,
    }
    assert out["lamp"][1]["energy_wh"] == 0x10002 and out["lamp"][1]["fault_bits"] == 3
    with pytest.raises(ProtocolError):
        p.decode_registers(first, regs[:-3], attrs)


def test_encode_checks_values() -> None:
    p = builtin_profile("traffic_controller")
    assert p.encode_field("plan", 7) == (1, [7])
    assert p.encode_field("mode", "flashing") == (2, [2])
    for value, code in ((0, "out_of_range"), (33, "out_of_range"), ("x", "bad_value")):
        with pytest.raises(RejectedError) as err:
            p.encode_field("plan", value)
        assert err.value.code == code
    with pytest.raises(RejectedError) as err:
        p.encode_field("mode", "disco")
    assert err.value.code == "bad_value"
    with pytest.raises(RejectedError) as err:
        p.encode_field("phase", 1)
    assert err.value.code == "read_only"
    with pytest.raises(RejectedError) as err:
        p.encode_field("nope", 1)
    assert err.value.code == "unknown_field"
    light = builtin_profile("lighting_cabinet")
    assert light.encode_block_field("lamp", 2, "dim", 40) == (16 + 2 * 8 + 1, [40])
    assert light.encode_block_field("lamp", 0, "on", False) == (16, [0])
    with pytest.raises(RejectedError) as err:
        light.encode_block_field("lamp", 0, "dim", 101)
    assert err.value.code == "out_of_range"
    with pytest.raises(RejectedError) as err:
        light.encode_block_field("lamp", 0, "power_w", 1)
    assert err.value.code == "read_only"


def test_twos_complement_and_word_order() -> None:
    assert FieldSpec("a", "i16").encode(-1) == [0xFFFF]
    assert FieldSpec("a", "i16").decode([0x8000]) == -32768
    assert FieldSpec("a", "i32").encode(-2) == [0xFFFF, 0xFFFE]
    assert FieldSpec("a", "u32").encode(0x12345678) == [0x1234, 0x5678]
    assert FieldSpec("a", "u32").decode([0x1234, 0x5678]) == 0x12345678
    assert FieldSpec("a", "bool").encode(True) == [1]
    assert FieldSpec("a", "bool").decode([0]) is False
    scaled = FieldSpec("a", "u16", scale=0.1)
    assert scaled.encode(12.34) == [123]
    assert scaled.decode([123]) == pytest.approx(12.3)
    with pytest.raises(RejectedError):
        FieldSpec("a", "u16").encode(70000)
    with pytest.raises(RejectedError):
        FieldSpec("a", "i16").encode(-40000)
    with pytest.raises(ProtocolError):
        FieldSpec("a", "u16", choices=("x", "y")).decode([5])


_RANGES = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
}


@given(st.sampled_from(sorted(_RANGES)), st.data())
def test_integer_round_trip(ftype: str, data: st.DataObject) -> None:
    low, high = _RANGES[ftype]
    value = data.draw(st.integers(low, high))
    spec = FieldSpec("v", ftype)
    regs = spec.encode(value)
    assert len(regs) == spec.width and all(0 <= r <= 0xFFFF for r in regs)
    assert spec.decode(regs) == value


@given(st.integers(0, 0xFFFF), st.sampled_from([0.1, 0.5, 2.0, 0.01]))
def test_scaled_round_trip(raw: int, scale: float) -> None:
    spec = FieldSpec("v", "u16", scale=scale)
    value = spec.decode([raw])
    assert spec.encode(value) == [raw]


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_register_round_trip_i32(regs: list[int]) -> None:
    spec = FieldSpec("v", "i32")
    assert spec.encode(spec.decode(regs)) == regs


def test_load_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[profile]\nname = "x"\nprotocol = "modbus"\n[[field]]\nname = "seq"\naddress = 0\n'
        'type = "u32"\n',
        encoding="utf-8",
    )
    assert load_profile(path).source == str(path)
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_profile(tmp_path / "missing.toml")


#: A field "a" at address 1; its lines are 9..12 after HEADER.
A1 = '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\n'

HEADER = """\
[profile]
name = "t"
protocol = "modbus"

[[field]]
name = "seq"
address = 100
type = "u32"
"""


def _errors(body: str, header: str = HEADER) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_profile(header + textwrap.dedent(body), "t.toml")
    return str(err.value).splitlines()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # line 9 is the first line after HEADER
        (
            '[[field]]\nname = "a"\ntype = "u16"\n',
            "t.toml:9: field[1].address: required field missing",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "float"\n',
            "t.toml:12: field[1].type: unknown type",
        ),
        (
            '[[field]]\nname = "a"\naddress = "1"\ntype = "u16"\n',
            "t.toml:11: field[1].address: expected an integer",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nwritable = true\n',
            "t.toml:13: field[1].reconcile: a writable field needs reconcile",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nreconcile = "alarm"\n',
            "t.toml:13: field[1].reconcile: reconcile is only for writable",
        ),
        (
            A1 + 'writable = true\nreconcile = "maybe"\n',
            "t.toml:14: field[1].reconcile: unknown reconcile",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nmin = 5\nmax = 1\n',
            "t.toml:14: field[1].max: max 1 < min 5",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "bool"\nchoices = ["x"]\n',
            "t.toml:13: field[1].choices: a bool field cannot have choices",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nchoices = ["x", "x"]\n',
            "t.toml:13: field[1].choices: choices must be distinct",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nscael = 2\n',
            "t.toml:13: field[1].scael: unknown key 'scael' (did you mean 'scale'?",
        ),
        (
            '[[field]]\nname = "seq"\naddress = 1\ntype = "u16"\n',
            "t.toml:10: field[1].name: duplicate field name 'seq' (first at line 5)",
        ),
        (
            '[[field]]\nname = "a"\naddress = 101\ntype = "u16"\n',
            "t.toml:11: field[1].address: register 101 is already used by 'seq'",
        ),
        (
            '[[field]]\nname = "a"\naddress = 1\ntype = "u16"\nnode = "ns=2;s=x"\n',
            "t.toml:13: field[1].node: node is for opcua, not modbus",
        ),
        (
            '[[field]]\nname = "Bad Name"\naddress = 1\ntype = "u16"\n',
            "t.toml:10: field[1].name: 'Bad Name' does not match",
        ),
        (
            '[[block]]\nname = "lamp"\nbase = 10\nstride = 2\ncount = 3\n'
            '  [[block.field]]\n  name = "e"\n  address = 1\n  type = "u32"\n',
            "t.toml:16: block[0].field[0].address: offset 1 (+2 registers) does not fit",
        ),
        (
            '[[block]]\nname = "lamp"\nbase = 96\nstride = 2\ncount = 3\n'
            '  [[block.field]]\n  name = "e"\n  address = 0\n  type = "u16"\n',
            "t.toml:11: block[0].base: repeats span registers 96..100, overlapping 'seq' at 100",
        ),
        (
            '[[block]]\nname = "lamp"\nbase = 10\nstride = 2\ncount = 3\n',
            "t.toml:9: block[0].field: a block needs at least one",
        ),
        (
            '[[block]]\nname = "lamp"\nbase = 10\ncount = 3\n'
            '  [[block.field]]\n  name = "e"\n  address = 0\n  type = "u16"\n',
            "t.toml:9: block[0].stride: required field missing",
        ),
    ],
)
def test_field_errors_with_lines(body: str, expected: str) -> None:
    lines = _errors(body)
    assert any(line.startswith(expected) for line in lines), lines


def test_header_errors_with_lines() -> None:
    header = (
        '[profile]\nname = "t"\nprotocol = "canbus"\npoll_interval_s = 0\nliveness_misses = 1.5\n'
    )
    lines = _errors("", header)
    assert any(x.startswith("t.toml:3: profile.protocol: unknown protocol 'canbus'") for x in lines)
    assert any(x.startswith("t.toml:4: profile.poll_interval_s: must be > 0") for x in lines)
    assert any(
        x.startswith("t.toml:5: profile.liveness_misses: expected an integer") for x in lines
    )


def test_every_error_is_reported_at_once() -> None:
    body = (
        '[[field]]\nname = "a"\ntype = "u16"\n'  # no address: line 9
        '[[field]]\nname = "b"\naddress = 1\ntype = "str"\n'  # bad type: line 15
    )
    lines = _errors(body)
    assert len(lines) == 2
    assert lines[0].startswith("t.toml:9:") and lines[1].startswith("t.toml:15:")


def test_missing_sections_and_seq() -> None:
    lines = _errors('[[field]]\nname = "a"\naddress = 1\ntype = "u16"\n', header="")
    assert lines[0].startswith("t.toml:1: profile: required table [profile] missing")
    lines = _errors("", header='[profile]\nname = "t"\nprotocol = "modbus"\n')
    assert lines == ["t.toml:1: profile: every profile needs a 'seq' field"]


def test_syntax_error_has_a_line() -> None:
    lines = _errors("[[field]\nname = 1\n")
    assert len(lines) == 1 and lines[0].startswith("t.toml:9: syntax:")
