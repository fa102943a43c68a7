"""The one table of environment variables (`nearline.settings`): the README's configuration table
matches it, values are checked when loaded, and the command lines' flags are derived from it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from nearline import cli
from nearline import settings as s
from nearline.errors import ConfigError
from nearline.worker import cli as worker_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLIENT_DOC = ROOT / "docs" / "client.md"
SETTINGS_CLASSES = (
    s.WorkerSettings,
    s.ApiSettings,
    s.ServeSettings,
    s.TritonSettings,
    s.FunctionsSettings,
    s.RedisSettings,
    s.ServiceBusSettings,
    s.ClientSettings,
    s.WebhookSettings,
)


def readme_rows() -> list[tuple[list[str], list[str], str]]:
    """The README's configuration table: (flags, variables, default) of each row."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("setting", "---"):
            continue
        rows.append((re.findall(r"`(--[\w-]+)`", cells[1]), re.findall(r"NEARLINE_\w+", cells[2]), cells[3]))
    return rows


def flags_of(var: s.Var | None = None) -> set[str]:
    """The flags of every settings field (bound to ``var``, when given)."""
    found = set()
    for cls in SETTINGS_CLASSES:
        for f in fields(cls):
            option = s.option_of(f)
            if option is not None and option.flag and (var is None or option.var is var):
                found.add(option.flag)
    return found


def readme_form(value: Any) -> str:
    """How the README writes a default: 30.0 as 30, the packaged file by its repository path."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and value.is_absolute():
        return value.relative_to(ROOT).as_posix()
    return str(value)


SERVER_VARIABLES = [v for v in s.VARIABLES if s.CLIENT not in v.programs]
CLIENT_VARIABLES = [v for v in s.VARIABLES if s.CLIENT in v.programs]
BY_NAME = {v.name: v for v in s.VARIABLES}


# --- the table and the documentation --------------------------------------------------------


def test_each_variable_is_in_the_table_once_and_loaded_by_a_settings_class() -> None:
    assert len(BY_NAME) == len(s.VARIABLES)
    assert all(v.name.startswith("NEARLINE_") for v in s.VARIABLES)
    loaded = {
        option.var
        for cls in SETTINGS_CLASSES
        for f in fields(cls)
        if (option := s.option_of(f)) is not None and option.var is not None
    }
    assert set(s.VARIABLES) == loaded


def test_the_readme_lists_every_server_variable_and_no_other() -> None:
    in_readme = [name for _, names, _ in readme_rows() for name in names]
    assert len(in_readme) == len(set(in_readme)), "a variable in two rows"
    assert set(in_readme) == {v.name for v in SERVER_VARIABLES}


def test_the_readme_defaults_are_the_tables() -> None:
    checked = 0
    for _, names, default in readme_rows():
        if not names:
            continue  # a flag-only row
        parts = default.split(", ") if len(names) > 1 else [default]
        assert len(parts) == len(names), default
        for name, part in zip(names, parts, strict=True):
            value = BY_NAME[name].default
            if value in (None, ()) or not re.search(r"\d|`", part):
                continue  # the README states no value (none, or a pointer to the docs)
            form = readme_form(value)
            assert re.search(rf"(?<![\w./-]){re.escape(form)}(?![\w/-])", part), f"{name}: {form} vs {part}"
            checked += 1
    assert checked >= 10


def test_the_readme_flags_are_the_settings_flags() -> None:
    for flags, names, _ in readme_rows():
        expected = set().union(*(flags_of(BY_NAME[n]) for n in names)) if names else flags_of()
        assert set(flags) <= expected, (flags, names)
        if names:
            assert set(flags) == expected, f"{names}: flags {sorted(expected)} not all in the README"


def test_the_client_variables_are_in_the_client_docs() -> None:
    text = CLIENT_DOC.read_text()
    for var in CLIENT_VARIABLES:
        assert f"${var.name}" in text
        assert var.default is None or f"`{var.default}`" in text


# --- loading and validation -----------------------------------------------------------------


def test_unset_or_empty_is_the_default_and_values_are_parsed() -> None:
    assert s.WorkerSettings.from_env({}) == s.WorkerSettings()
    assert s.WorkerSettings.from_env({"NEARLINE_MAX_BATCH": "  "}).max_batch == 32
    worker = s.WorkerSettings.from_env(
        {
            "NEARLINE_MAX_BATCH": "8",
            "NEARLINE_LEASE_S": "2.5",
            "NEARLINE_MODELS": "/m",
            "NEARLINE_BROKER": "memory://",
        }
    )
    assert (worker.max_batch, worker.lease_s, worker.models, worker.broker) == (
        8,
        2.5,
        Path("/m"),
        "memory://",
    )
    api = s.ApiSettings.from_env({"NEARLINE_API_KEYS": " k1, ,k2 "})
    assert api.api_keys == ("k1", "k2")


def test_serve_settings_hold_the_api_and_worker_settings() -> None:
    env = {"NEARLINE_MAX_BATCH": "4", "NEARLINE_MAX_QUEUE_DEPTH": "9", "NEARLINE_DATA_DIR": "d"}
    serve = s.ServeSettings.from_env(env)
    assert serve.worker == s.WorkerSettings.from_env(env)
    assert serve.api == s.ApiSettings.from_env(env)
    assert (serve.worker.max_batch, serve.api.max_queue_depth, serve.data_dir) == (4, 9, Path("d"))


@pytest.mark.parametrize(
    ("cls", "name", "raw", "why"),
    [
        (s.WorkerSettings, "NEARLINE_MAX_BATCH", "abc", "not a whole number"),
        (s.WorkerSettings, "NEARLINE_MAX_BATCH", "-3", "must be >= 1"),
        (s.WorkerSettings, "NEARLINE_MAX_BATCH", "0", "must be >= 1"),
        (s.WorkerSettings, "NEARLINE_MAX_WAIT_MS", "soon", "not a number"),
        (s.WorkerSettings, "NEARLINE_MAX_WAIT_MS", "-1", "must be >= 0"),
        (s.WorkerSettings, "NEARLINE_LEASE_S", "0", "must be > 0"),
        (s.WorkerSettings, "NEARLINE_LEASE_S", "nan", "must be > 0"),
        (s.WorkerSettings, "NEARLINE_MAX_DELIVERIES", "0", "must be >= 1"),
        (s.WorkerSettings, "NEARLINE_WORKER_PORT", "70000", "must be <= 65535"),
        (s.WorkerSettings, "NEARLINE_WORKER_PORT", "-2", "must be >= -1"),
        (s.WorkerSettings, "NEARLINE_MODEL_BACKEND", "tensorflow", "must be one of torch, onnx, triton"),
        (s.ServeSettings, "NEARLINE_MAX_QUEUE_DEPTH", "-3", "must be >= 1"),
        (s.ServeSettings, "NEARLINE_RETENTION_S", "0", "must be > 0"),
        (s.ServeSettings, "NEARLINE_MAX_BATCH", "abc", "not a whole number"),
        (s.RedisSettings, "NEARLINE_CLAIM_CHECK_BYTES", "-1", "must be >= 0"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(
    cls: type[s.Settings], name: str, raw: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        cls.from_env({name: raw})
    assert caught.value.message == f"{name}={raw!r}: {why}"


# --- flags ----------------------------------------------------------------------------------


def test_every_flag_keeps_its_name() -> None:
    def flags(parser: Any) -> set[str]:
        return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}

    assert flags(cli.serve_parser(s.ServeSettings())) == {
        *("--host", "--port", "--broker", "--workers", "--no-workers", "--data-dir", "--models"),
        *("--pipelines", "--insecure", "--max-queue-depth", "--retention-s", "--max-body", "--reload"),
        *("--lease-s", "--max-batch", "--max-wait-ms"),
    }
    assert flags(worker_cli.build_parser(s.WorkerSettings())) == {
        *("--broker", "--models", "--pipelines", "--max-batch", "--max-wait-ms", "--lease-s"),
        *("--max-deliveries", "--port", "--host", "--model-backend", "--triton-url", "--name"),
        "--batch-window",
    }


def test_a_flag_overrides_the_variable() -> None:
    env = {"NEARLINE_MAX_BATCH": "7", "NEARLINE_BROKER": "memory://", "NEARLINE_API_KEYS": "k"}
    assert cli.serve_settings([], env).worker.max_batch == 7
    serve = cli.serve_settings(["--max-batch", "3", "--broker", "redis://r:6379/0", "--no-workers"], env)
    assert (serve.worker.max_batch, serve.worker.broker, serve.no_workers) == (3, "redis://r:6379/0", True)
    assert serve.api.api_keys == ("k",)
    assert cli.serve_settings(["--max-body", "10"], {}).api.max_body == 10
    assert worker_cli.worker_settings([], env).max_batch == 7
    worker = worker_cli.worker_settings(
        ["--max-batch", "2", "--port", "-1", "--model-backend", "triton"], env
    )
    assert (worker.max_batch, worker.port, worker.model_backend, worker.broker) == (
        2,
        -1,
        "triton",
        "memory://",
    )


def test_the_flags_show_the_environments_values_as_defaults() -> None:
    settings = s.WorkerSettings.from_env({"NEARLINE_MAX_BATCH": "7"})
    help_text = " ".join(worker_cli.build_parser(settings).format_help().split())
    assert "(default: 7; env NEARLINE_MAX_BATCH)" in help_text


def test_a_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        worker_cli.worker_settings(["--max-batch", "-3"], {})
    assert exited.value.code == 2
    assert "argument --max-batch: '-3': must be >= 1" in capsys.readouterr().err


def test_triton_serve_flags_override_the_variable() -> None:
    pytest.importorskip("pytriton")
    from nearline.triton.server import triton_settings

    env = {"NEARLINE_MODELS": "/repo"}
    assert triton_settings([], env) == s.TritonSettings(models=Path("/repo"))
    given = triton_settings(
        ["--models", "m", "--only", "digits", "--only", "topics", "--grpc-port", "9001"], env
    )
    assert (given.models, given.only, given.grpc_port) == (Path("m"), ("digits", "topics"), 9001)


@pytest.mark.parametrize(
    ("main", "prog"),
    [
        (lambda: cli.main(["serve", "--no-workers"]), "nearline serve"),
        (lambda: worker_cli.main([]), "python -m workers"),
        (lambda: cli.main(["worker"]), "nearline worker"),
    ],
)
def test_a_bad_variable_stops_a_command_with_one_line_and_status_2(
    main: Any, prog: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEARLINE_MAX_BATCH", "abc")
    assert main() == 2
    assert capsys.readouterr().err == f"{prog}: NEARLINE_MAX_BATCH='abc': not a whole number\n"
