"""The command line: exit codes and one-line errors (no Ray needed)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runtime.inventory import parse_inventory


def cp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_inventory_demo_writes_a_valid_inventory(tmp_path: Path) -> None:
    out = cp("inventory", "demo", "--scale", "0.05", "--seed", "2")
    assert out.returncode == 0, out.stderr
    inv = parse_inventory(out.stdout, "<stdout>")
    assert len(inv.equipment) > 50
    path = tmp_path / "city.toml"
    path.write_text(out.stdout, encoding="utf-8")
    ok = cp("inventory", "check", str(path))
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_inventory_check_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[metropolis]\nname = "x"\n[[municipality]]\nslug = "dijon"\n'
                    'name = "Dijon"\nlat = 47.3\nlon = 5.04\npopulation = 1\n'
                    '[[equipment]]\nid = "a"\nkind = "lamp"\nmunicipality = "dijon"\n'
                    'lat = 147.3\nlon = 5.0\nendpoint = "e"\nprofile = "p"\n', encoding="utf-8")
    out = cp("inventory", "check", str(path))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:11: equipment[0].kind")
    assert lines[1].startswith(f"{path}:13: equipment[0].lat")
    assert "Traceback" not in out.stderr


def test_usage_errors_exit_2_with_one_line() -> None:
    out = cp("bench", "no-such-bench")
    assert out.returncode == 2 and "unknown benchmark" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # A real-time priority Linux has not: refused before anything starts.
    out = cp("bench", "priority-latency", "--realtime", "100")
    assert out.returncode == 2 and "--realtime" in out.stderr


def test_run_refuses_opcua_security_without_certificates(tmp_path: Path) -> None:
    inv = tmp_path / "city.toml"
    inv.write_text(cp("inventory", "demo", "--scale", "0.01").stdout, encoding="utf-8")
    out = cp("run", "--inventory", str(inv), "--opcua-security", "Sign")
    assert out.returncode == 2 and "--opcua-cert" in out.stderr


def test_inventory_check_and_run_refuse_a_schedule_of_another_kind(tmp_path: Path) -> None:
    text = cp("inventory", "demo", "--scale", "0.01").stdout
    lines = text.split("\n")
    at = lines.index('schedule = "road_lighting"')
    lines[at] = 'schedule = "signals"'
    path = tmp_path / "city.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    out = cp("inventory", "check", str(path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [issue] = out.stderr.splitlines()
    assert issue.startswith(f"{path}:{at + 1}: equipment[")
    assert issue.endswith(".attrs.schedule: 'signals' is a schedule of crossroad, not of "
                          "lighting_circuit (the lighting_circuit schedules: road_lighting)")
    # The service does not start with it: the same line, before anything is started.
    run = cp("run", "--inventory", str(path))
    assert run.returncode == 1 and run.stderr.splitlines() == [issue]


def test_the_credentials_file_is_kept_out_of_git() -> None:
    from runtime.cli import DEFAULT_CREDENTIALS_FILE

    root = Path(__file__).resolve().parents[1]
    # write_credentials() writes a temporary beside the file, then renames it.
    names = [DEFAULT_CREDENTIALS_FILE, f"{DEFAULT_CREDENTIALS_FILE}.4242.0a1b2c3d.tmp",
             f"demo/{DEFAULT_CREDENTIALS_FILE}"]
    patterns = [line.strip() for line in (root / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name in names:
        assert any(fnmatch.fnmatch(Path(name).name, p) for p in patterns), name
    if shutil.which("git") and (root / ".git").exists():
        out = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root,
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.split() == names, out.stderr


# -- secrets stay off the command line and out of what is printed ----------------------------


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A small inventory file, and the arguments ``run`` starts the service with (not started)."""
    from runtime import cli
    from runtime.demo_inventory import generate_demo

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_serve", lambda inv, **kwargs: calls.append(kwargs))
    monkeypatch.delenv(cli.REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(cli.MQTT_URL_ENV, raising=False)
    path = tmp_path / "city.toml"
    path.write_text(generate_demo(scale=0.01, seed=1), encoding="utf-8")
    return path, calls


def test_run_warns_of_a_password_on_the_command_line(
        served: tuple[Path, list[dict[str, Any]]]) -> None:
    from runtime.cli import cli

    inv, calls = served
    redis_url, mqtt_url = "redis://:r3d1s-pw@10.0.0.5:6379/0", "mqtt://cp:mq77-pw@10.0.0.6:1883"
    result = CliRunner().invoke(cli, ["run", "--inventory", str(inv), "--redis", redis_url,
                                      "--mqtt", mqtt_url])
    assert result.exit_code == 0, result.output
    assert calls[0]["redis"] == redis_url and calls[0]["mqtt"] == mqtt_url  # still used
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert "--redis" in warnings[0] and "COMMANDPOST_REDIS_URL" in warnings[0]
    assert "--mqtt" in warnings[1] and "COMMANDPOST_MQTT_URL" in warnings[1]
    assert "r3d1s-pw" not in result.output and "mq77-pw" not in result.output


def test_run_takes_the_urls_from_the_environment_without_a_warning(
        served: tuple[Path, list[dict[str, Any]]]) -> None:
    from runtime.cli import cli

    inv, calls = served
    env = {"COMMANDPOST_REDIS_URL": "redis://:r3d1s-pw@10.0.0.5:6379/0",
           "COMMANDPOST_MQTT_URL": "mqtt://cp:mq77-pw@10.0.0.6:1883"}
    result = CliRunner().invoke(cli, ["run", "--inventory", str(inv)], env=env)
    assert result.exit_code == 0, result.output
    assert (calls[0]["redis"], calls[0]["mqtt"]) == (env["COMMANDPOST_REDIS_URL"],
                                                     env["COMMANDPOST_MQTT_URL"])
    assert result.stderr == ""
    # Nor is a URL without a password worth a warning.
    result = CliRunner().invoke(cli, ["run", "--inventory", str(inv), "--redis",
                                      "redis://10.0.0.5:6379/0", "--mqtt", "mqtt://cp@h:1883"])
    assert result.exit_code == 0 and result.stderr == ""


def test_the_start_up_lines_hide_passwords() -> None:
    from runtime.cli import _connection_lines

    lines = _connection_lines("redis://:r3d1s-pw@10.0.0.5:6379/0",
                              "mqtt://cp:mq77-pw@10.0.0.6:1883",
                              [{"kind": "mqtt_devices", "devices": 3,
                                "endpoint": "mqtt://cp:mq77-pw@10.0.0.6:1883"}])
    text = "\n".join(lines)
    assert "r3d1s-pw" not in text and "mq77-pw" not in text
    assert "10.0.0.5:6379/0" in text and "10.0.0.6:1883" in text and "3 devices" in text


def test_the_systemd_unit_keeps_secrets_off_the_command_line() -> None:
    unit = (Path(__file__).resolve().parents[1] / "deploy" / "systemd"
            / "commandpost.service").read_text(encoding="utf-8")
    settings = [line.strip() for line in unit.replace("\\\n", " ").splitlines()]
    exec_start = next(line for line in settings if line.startswith("ExecStart="))
    assert "@" not in exec_start and "--redis" not in exec_start and "--mqtt" not in exec_start
    env_file = next(line for line in settings if line.startswith("EnvironmentFile="))
    example = (Path(__file__).resolve().parents[1] / "deploy" / "systemd"
               / "commandpost.env.example").read_text(encoding="utf-8")
    assert env_file.endswith("/commandpost.env")
    assert "COMMANDPOST_REDIS_URL=" in example and "COMMANDPOST_MQTT_URL=" in example


@pytest.mark.parametrize("url,secret", [
    ("redis://:pw@h:6379/0", True), ("mqtt://user:pw@h:1883", True),
    ("redis://h:6379/0?password=pw", True), ("rediss://u:p%40ss@h", True),
    ("mqtt://user@h:1883", False), ("redis://h:6379/0?db=1", False), ("127.0.0.1:6379", False),
])
def test_holds_secret(url: str, secret: bool) -> None:
    from admin_web.redact import holds_secret

    assert holds_secret(url) is secret


def test_run_marks_the_login_cookie_secure_on_request(
        served: tuple[Path, list[dict[str, Any]]]) -> None:
    from runtime.cli import cli

    inv, calls = served
    assert CliRunner().invoke(cli, ["run", "--inventory", str(inv)]).exit_code == 0
    assert CliRunner().invoke(cli, ["run", "--inventory", str(inv),
                                    "--secure-cookies"]).exit_code == 0
    assert [c["secure_cookies"] for c in calls] == [False, True]
    assert CliRunner().invoke(cli, ["run", "--inventory", str(inv),
                                    "--trusted-proxies", "1"]).exit_code == 0
    assert [c["trusted_proxies"] for c in calls] == [0, 0, 1]
