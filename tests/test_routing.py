"""The routes file and the front door's settings: parsed, layered, and refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import cli
from bridge.config import ConfigError, Settings
from bridge.routing import RouteDefaults, load_routes, resolve

GOOD = """
# A clinic with two numbers.
[default]
forward_to = "+15550009999"
templates = ["clinical_notes_template"]
consent = true
consent_text = "This call is transcribed."

[numbers."+15550001111"]
forward_to = "+15550002222"
templates = ["clinical_notes_template", "eka_soap"]
language_hint = ["en", "hi"]
consent_voice = "Polly.Aditi"
consent_language = "en-IN"
clinic_id = "clinic-7"
doctor_id = "dr-42"

[numbers."+15550003333"]
mode = "dictation"
consent = false
"""

BASE_ENV = {"EKA_ACCESS_TOKEN": "eka-token", "TWILIO_AUTH_TOKEN": "tw"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return str(path)


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    return error.value.problems


def test_a_good_file_layers_over_the_environment(tmp_path: Path) -> None:
    env = {**BASE_ENV, "BRIDGE_ROUTES_FILE": write(tmp_path, GOOD), "EKA_LANGUAGE_HINT": "en"}
    settings = Settings.from_env(env)
    clinic = resolve(RouteDefaults.of(settings), "+15550001111")
    assert clinic.number == "+15550001111" and clinic.mode == "forward"
    assert clinic.forward_to == "+15550002222"
    assert clinic.templates == ("clinical_notes_template", "eka_soap")
    assert (clinic.consent, clinic.consent_text) == (True, "This call is transcribed.")  # from [default]
    assert (clinic.consent_voice, clinic.consent_language) == ("Polly.Aditi", "en-IN")
    assert clinic.session_overrides()["additional_data"] == {
        "clinic_id": "clinic-7",
        "doctor_id": "dr-42",
        "route": "+15550001111",
    }

    dictation = resolve(RouteDefaults.of(settings), "+15550003333")
    assert (dictation.mode, dictation.session_mode, dictation.consent) == ("dictation", "dictation", False)
    assert dictation.language_hint == ("en",)  # from the environment

    other = resolve(RouteDefaults.of(settings), "+15557770000")
    assert other.number is None and other.forward_to == "+15550009999"
    assert resolve(RouteDefaults.of(settings), None) == other


def test_without_a_file_the_environment_decides(tmp_path: Path) -> None:
    env = {
        **BASE_ENV,
        "BRIDGE_MODE": "dictation",
        "BRIDGE_CONSENT": "off",
        "BRIDGE_CONSENT_VOICE": "Polly.Joanna",
        "BRIDGE_CONSENT_LANGUAGE": "en-US",
        "BRIDGE_CONSENT_TEXT": "Hello.",
        "BRIDGE_FORWARD_NUMBER": "+15550002222",
        "BRIDGE_WS_MAX_BYTES": "8192",
        "BRIDGE_MAX_CALLS": "7",
        "BRIDGE_MAX_CALL_S": "600",
        "BRIDGE_MEDIA_IDLE_S": "12.5",
    }
    settings = Settings.from_env(env)
    route = resolve(RouteDefaults.of(settings), "+15550001111")
    assert (route.mode, route.session_mode, route.consent, route.forward_to) == (
        "dictation",
        "dictation",
        False,
        "+15550002222",
    )
    say = (route.consent_voice, route.consent_language, route.consent_text)
    assert say == ("Polly.Joanna", "en-US", "Hello.")
    assert (settings.ws_max_bytes, settings.max_calls, settings.max_call_s, settings.media_idle_s) == (
        8192,
        7,
        600.0,
        12.5,
    )
    defaults = Settings.from_env(BASE_ENV)
    assert (defaults.ws_max_bytes, defaults.max_calls, defaults.max_call_s, defaults.media_idle_s) == (
        65536,
        100,
        14400.0,
        30.0,
    )
    assert defaults.consent and defaults.call_mode == "forward" and defaults.routes is None


def test_bad_environment_values_are_each_reported() -> None:
    problems = problems_of(
        {
            **BASE_ENV,
            "BRIDGE_MODE": "fax",
            "BRIDGE_FORWARD_NUMBER": "555-1234",
            "BRIDGE_CONSENT": "maybe",
            "BRIDGE_MAX_CALLS": "0",
            "BRIDGE_MEDIA_IDLE_S": "soon",
            "BRIDGE_WS_MAX_BYTES": "10",
        }
    )
    assert len(problems) == 6
    names = ("BRIDGE_MODE", "BRIDGE_FORWARD_NUMBER", "BRIDGE_CONSENT", "BRIDGE_MAX_CALLS")
    for name in (*names, "BRIDGE_MEDIA_IDLE_S", "BRIDGE_WS_MAX_BYTES"):
        assert sum(p.startswith(name) for p in problems) == 1, (name, problems)


def test_a_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[default]\nforward_to = "+15550009999"\nmode = forward\n')
    table, problems = load_routes(path)
    assert table is None
    assert len(problems) == 1 and "line 3" in problems[0] and path in problems[0]


def test_semantic_errors_name_the_section_and_key(tmp_path: Path) -> None:
    text = """
colour = "blue"

[default]
mode = "fax"
forward = "+15550009999"

[numbers."+15550001111"]
templates = ["a", "b", "c"]
forward_to = "0800 123"
consent = "yes"

[numbers."5550001111"]
clinic_id = ""
"""
    table, problems = load_routes(write(tmp_path, text))
    assert table is not None
    expected = [
        ("top-level", "'colour'"),
        ("[default]", "mode = 'fax'"),
        ("[default]", "unknown key 'forward'"),
        ('[numbers."+15550001111"]', "at most 2"),
        ('[numbers."+15550001111"]', "forward_to = '0800 123'"),
        ('[numbers."+15550001111"]', "consent = 'yes'"),
        ('[numbers."5550001111"]', "not an E.164 number"),
        ('[numbers."5550001111"]', "clinic_id"),
    ]
    assert len(problems) == len(expected), problems
    for (where, what), problem in zip(expected, problems, strict=True):
        assert where in problem and what in problem, (where, what, problem)


def test_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    _, problems = load_routes(str(tmp_path / "nope.toml"))
    assert len(problems) == 1 and "cannot read" in problems[0]


def test_serve_refuses_to_start_with_a_bad_routes_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[numbers."+15550001111"]\nmode = "fax"\ntemplates = ["a", "b", "c"]\n')
    for name in list(os.environ):
        if name.startswith(("EKA_", "BRIDGE_", "TWILIO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EKA_ACCESS_TOKEN", "eka-token")
    monkeypatch.setenv("BRIDGE_ROUTES_FILE", path)
    monkeypatch.setenv("BRIDGE_MAX_CALL_S", "-1")

    assert cli.main(["serve", "--port", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("bridge: configuration error: ") for line in lines)
    assert sum('[numbers."+15550001111"]' in line and "mode = 'fax'" in line for line in lines) == 1
    assert sum('[numbers."+15550001111"]' in line and "at most 2" in line for line in lines) == 1
    assert sum("BRIDGE_MAX_CALL_S" in line for line in lines) == 1


def test_serve_subprocess_exits_2_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[default]\nforward_to = "+15550009999"\n\n[numbers."+1555"\nmode = "dictation"\n')
    env = {"PATH": os.environ.get("PATH", ""), "EKA_ACCESS_TOKEN": "t", "BRIDGE_ROUTES_FILE": path}
    command = [sys.executable, "-m", "bridge", "serve", "--port", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("bridge: configuration error: BRIDGE_ROUTES_FILE") and "line 4" in line
