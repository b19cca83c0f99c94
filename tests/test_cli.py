"""The `titok` console script: help, lazy imports, dispatch and errors."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from titok import cli

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter, so sys.modules shows only what that code imported."""
    env = {**os.environ, "COLUMNS": "200"}  # argparse wraps help at the terminal width
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _imported_after(call: str) -> tuple[int, dict[str, object]]:
    """Run `call` (an expression returning an exit code) and report the code and the project modules loaded."""
    proc = _python(
        "import json, sys\n"
        "from titok import cli\n"
        f"code = {call}\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('titok',))\n"
        "print('\\n' + json.dumps({'code': code, 'mods': mods}))\n"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["code"], {"mods": report["mods"], "stdout": proc.stdout, "stderr": proc.stderr}


def test_help_lists_every_subcommand_without_importing_them() -> None:
    code, out = _imported_after("cli.main(['--help'])")
    assert code == 0
    for name, command in cli.COMMANDS.items():
        assert name in out["stdout"]
        assert command.help in out["stdout"]
    assert out["mods"] == ["titok", "titok.cli"]


def test_console_script_module_entry_point_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "titok.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: titok")
    for name in ("serve", "bench", "encode", "decode", "train", "eval", "export", "convert", "data"):
        assert name in proc.stdout


@pytest.mark.slow
def test_serve_does_not_import_model_code() -> None:
    code, out = _imported_after("cli.main(['serve', '--help'])")
    assert code == 0, out["stderr"]
    assert "usage:" in out["stdout"]
    assert "titok.__main__" in out["mods"]
    assert not [m for m in out["mods"] if m == "titok.model" or m.startswith("titok.model.")], out["mods"]


def test_unknown_subcommand_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err
    assert "serve" in err and "train" in err  # the message says what is allowed


def test_missing_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_nested_group_lists_and_rejects(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "--help"]) == 0
    assert "photos" in capsys.readouterr().out
    assert cli.main(["data", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: object) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_add_args_run_target_gets_its_own_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def add_args(parser: argparse.ArgumentParser) -> None:
        seen["prog"] = parser.prog
        parser.add_argument("out")
        parser.add_argument("--steps", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        seen["args"] = args
        return 3

    _fake_module(monkeypatch, "fake_train", add_args=add_args, run=run)
    table = {"data": cli.Command("group", children={"photos": cli.Command("build", "fake_train")})}
    assert cli.resolve(["data", "photos", "OUT", "--steps", "7"], table=table)() == 3
    assert seen["prog"] == "titok data photos"
    assert vars(seen["args"]) == {"out": "OUT", "steps": 7}


def test_function_target_gets_the_remaining_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    _fake_module(monkeypatch, "fake_serve", main=lambda argv: calls.append(argv) or 0)
    table = {"serve": cli.Command("serve", "fake_serve:main")}
    # Options after the subcommand belong to it, including --help.
    assert cli.resolve(["serve", "--port", "9000", "--help"], table=table)() == 0
    assert calls == [["--port", "9000", "--help"]]


def test_missing_optional_dependency_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> None:
        raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")

    monkeypatch.setattr(cli.importlib, "import_module", fail)
    with pytest.raises(SystemExit, match=r"titok train: needs the Python package 'tqdm'.*\[train\]"):
        cli.resolve(["train"])


def _targets(table: dict[str, cli.Command]) -> list[str]:
    out = []
    for command in table.values():
        out += _targets(command.children) if command.children else [command.target]
    return out


@pytest.mark.parametrize("target", _targets(cli.COMMANDS))
def test_every_target_exists(target: str) -> None:
    """The table names real code: a module with the function, or with add_args and run."""
    module_name, _, func_name = target.partition(":")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin, f"{module_name} does not exist"
    source = Path(spec.origin).read_text()
    # Read the source rather than import it: training modules may need the [train] extra.
    names = [func_name] if func_name else ["add_args", "run"]
    for name in names:
        assert f"def {name}(" in source, f"{module_name} has no {name}()"


@pytest.mark.parametrize("argv", [["serve", "--model", ""], ["serve", "--model", "  "],
                                  ["tokenize", "photos", "--out", "out", "--model", ""],
                                  ["detokenize", "out", "--out", "png", "--model", " "]])
def test_an_empty_model_is_refused_not_read_as_the_default(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import titok.__main__

    monkeypatch.setattr(titok.__main__, "serve", lambda *a, **k: 0)  # never listen, whatever the parse
    assert cli.main(argv) == 2
    assert ("argument --model: is empty: give an exported artifact's path, a bundled model's name (default, ordered)"
            in capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "99999"], "port 99999 is not a TCP port (0 to 65535; 0 picks a free one)"),
    (["--port", "-5"], "port -5 is not a TCP port"),
    (["--host", "nosuch.invalid"], "cannot listen on host 'nosuch.invalid': Name or service not known"),
])
def test_serve_refuses_an_address_it_cannot_listen_on_before_loading_the_model(
        argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel took port 99999 as 34463 (modulo 65536) while the log said 99999; -5 and an unknown host failed
    only after the model had loaded, in words that named neither."""
    import socket

    import titok.__main__

    def no_such_host(host: str, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # offline or not, the same answer for the test's host
    monkeypatch.setattr(titok.__main__.Engine, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main(["serve", *argv]) == 2
    assert f"titok serve: {message}" in capsys.readouterr().err
