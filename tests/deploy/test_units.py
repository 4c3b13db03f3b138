"""deploy/digits.service: it parses, it says what deploy/README.md says, and its command line,
paths and stop timeout agree with the service itself.

The unit is read the way systemd reads it (sections, ``Key=value`` lines, repeated keys,
comments, backslash continuations). Where ``systemd-analyze`` is installed (Debian package
``systemd``), ``systemd-analyze verify`` checks it too, on a copy whose install directory is
this checkout (so that ExecStart's interpreter exists). No systemd is started.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import build_parser
from service.cluster.launch import DRAIN_MARGIN_S
from service.config import load_settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "digits.service"
INSTALL_DIR = "/opt/digits"  # where deploy/README.md puts the checkout


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value, in order (a key may repeat, as Environment= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    lines = text.splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical.append(line[:-1].strip())
            continue
        line = " ".join([*logical, line]).strip()
        logical = []
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: a key before any [section]"
        key, sep, value = line.partition("=")
        assert sep and key.strip() and key.strip() == key.strip().replace(" ", ""), \
            f"line {number}: not Key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not logical, "the file ends inside a continued line"
    return sections


def seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def service(unit) -> dict[str, str]:
    """[Service], one value per key (the last, as systemd keeps for single-valued keys)."""
    return {key: values[-1] for key, values in unit["Service"].items()}


@pytest.fixture(scope="module")
def exec_start(service) -> list[str]:
    return shlex.split(service["ExecStart"])


def test_sections(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["Description"][0]


def test_forking_with_the_parents_pidfile(service, exec_start):
    assert service["Type"] == "forking"
    assert "--daemon" in exec_start
    pidfile = exec_start[exec_start.index("--pidfile") + 1]
    assert service["PIDFile"] == pidfile
    # the pid file lives in the runtime directory systemd creates for User=
    assert Path(pidfile).parent == Path("/run") / service["RuntimeDirectory"]


def test_exec_start_is_a_valid_serve_command(service, exec_start):
    python, dash_m, module, *args = exec_start
    assert (dash_m, module) == ("-m", "service")
    assert python == f"{service['WorkingDirectory']}/.venv/bin/python"  # `make install`'s venv
    parsed = build_parser().parse_args(args)  # the real CLI: every flag exists
    assert args[0] == "serve" and parsed.daemon
    assert str(parsed.config) == f"{service['WorkingDirectory']}/conf/service.conf"
    # Always the supervising parent (SIGHUP rolls the workers), even with workers = 1:
    # a --socket-dir in the runtime directory, reachable by the digits group only.
    assert parsed.socket_dir is not None
    assert parsed.socket_dir.parent == Path("/run") / service["RuntimeDirectory"]
    assert service["RuntimeDirectoryMode"] == "0750"


def test_reload_stop_and_restart(service):
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the parent only; it drains the workers
    assert service["Restart"] == "on-failure"
    assert seconds(service["RestartSec"]) > 0


def test_stop_timeout_exceeds_the_drain(service):
    """systemd must not SIGKILL a drain the parent still waits for: the parent gives each
    worker server.shutdown_timeout + DRAIN_MARGIN_S (service/cluster/launch.py), then 5 s
    more before it kills what is left and exits (Supervisor._shutdown)."""
    shutdown = float(load_settings(REPO / "conf" / "service.conf").cherrypy["server.shutdown_timeout"])
    assert seconds(service["TimeoutStopSec"]) > shutdown + DRAIN_MARGIN_S + 5


def test_dedicated_user_and_paths(service):
    assert service["User"] not in ("", "root", "0")
    assert service["Group"] not in ("", "root", "0")
    assert service["WorkingDirectory"] == INSTALL_DIR
    assert f"{INSTALL_DIR}/var" in service["ReadWritePaths"].split()
    assert seconds(service["TimeoutStartSec"]) > 0
    assert int(service["LimitNOFILE"].split(":")[-1]) >= 4096


def test_environment(unit):
    environment = " ".join(unit["Service"]["Environment"])
    pairs = dict(item.split("=", 1) for item in shlex.split(environment))
    assert pairs["PYTHONUNBUFFERED"] == "1"
    assert "TF_CPP_MIN_LOG_LEVEL" in pairs


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("key, value", sorted(HARDENING.items()))
def test_hardening(service, key, value):
    assert service.get(key) == value


def test_every_path_agrees_on_the_install_dir():
    """Moving the install means changing /opt/digits only (deploy/README.md says so)."""
    text = UNIT.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for path in re.findall(r"(?<![\w/])/opt/[\w.-]+", code):
        assert path == INSTALL_DIR


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # Same unit, installed in this checkout, run by this interpreter: ExecStart must exist.
    text = UNIT.read_text().replace(f"{INSTALL_DIR}/.venv/bin/python", sys.executable)
    copy = tmp_path / "digits.service"
    copy.write_text(text.replace(INSTALL_DIR, str(REPO)))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)
    # Unknown keys and bad values are only warnings (exit status 0): any line about the unit
    # is a failure.
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "digits.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
