"""The command line: exit codes and one-line errors (no Ray needed)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_run_refuses_opcua_security_without_certificates(tmp_path: Path) -> None:
    inv = tmp_path / "city.toml"
    inv.write_text(cp("inventory", "demo", "--scale", "0.01").stdout, encoding="utf-8")
    out = cp("run", "--inventory", str(inv), "--opcua-security", "Sign")
    assert out.returncode == 2 and "--opcua-cert" in out.stderr


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
