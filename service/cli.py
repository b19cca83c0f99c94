"""The `titok` console script: one entry point, one subcommand per job.

Subcommands import their module only when chosen, so `titok serve` never loads `model` (training
code, matplotlib, ...) and `titok --help` imports nothing but this file. The table below is the one
place that names each subcommand, its help line and the module that implements it.

Two kinds of targets:
- ``"pkg.module:function"``: the function takes the remaining argv and returns an exit code
  (the service's own entry points, which parse their arguments themselves);
- ``"pkg.module"``: the module has ``add_args(parser)`` and ``run(args) -> int``; the parser is
  built here with ``prog="titok NAME"``.

A subcommand may instead hold a table of its own (``titok data photos OUT``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class Command:
    help: str
    target: str = ""
    children: dict[str, Command] = field(default_factory=dict)


DESCRIPTION = "TiTok 1D image tokenizer: serve, train, evaluate and export models."

COMMANDS: dict[str, Command] = {
    "serve": Command("run the HTTP service (POST /encode, POST /decode, GET /metrics)", "titok.__main__:main"),
    "bench": Command("benchmark the service against the raw engine and print a table", "titok.bench.bench:main"),
    "encode": Command("client: send images to a running service, print token IDs", "titok.client.cli:encode_main"),
    "decode": Command("client: send token IDs to a running service, save the PNG", "titok.client.cli:decode_main"),
    "train": Command("train a tokenizer (single process or under torchrun)", "titok.model.train"),
    "eval": Command("evaluate a checkpoint or exported model on held-out images", "titok.model.evaluate"),
    "export": Command("export a checkpoint to the TorchScript file the service loads", "titok.model.export"),
    "tokenize": Command("tokenize a dataset into Parquet shards of tokens", "titok.dataset.cli:tokenize_main"),
    "bench-tokenize": Command("benchmark titok tokenize against the raw artifact", "titok.dataset.bench:main"),
    "bench-budgets": Command("benchmark /decode against k and the target-PSNR encode",
                             "titok.bench.bench_budgets:main"),
    "detokenize": Command("decode rows of a tokenized directory to PNGs", "titok.dataset.cli:detokenize_main"),
    "convert": Command("convert a published TiTok checkpoint to a servable file", "titok.model.convert"),
    "pull": Command("fetch a published tokenizer from the Hugging Face Hub and convert it once (cached)",
                    "titok.model.hub"),
    "models": Command("list the published tokenizers known by name, with their sizes", "titok.model.hub:models_main"),
    "data": Command(
        "build training data",
        children={"photos": Command("build the offline photo set from Debian/PyPI packages", "titok.model.photos")},
    ),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("titok-service")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _group_parser(prog: str, description: str, table: dict[str, Command]) -> argparse.ArgumentParser:
    """A parser that only lists `table`'s subcommands and validates the chosen name."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if prog == "titok":
        parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, cmd in table.items():
        # add_help=False: the subcommand's own parser answers `titok NAME --help`.
        sub.add_parser(name, help=cmd.help, add_help=False)
    parser.epilog = f"Run '{prog} COMMAND --help' for a command's options."
    return parser


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv after its first positional: (options up to and including the command, the rest)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return list(argv[: i + 1]), list(argv[i + 1 :])
    return list(argv), []


def _choose(
    argv: Sequence[str], prog: str, description: str, table: dict[str, Command]
) -> tuple[str, Command, list[str]]:
    """Walk the (nested) table along argv: (the chosen command's prog, the command, its own arguments)."""
    head, rest = _split(argv)
    name = _group_parser(prog, description, table).parse_args(head).command
    cmd = table[name]
    if cmd.children:
        return _choose(rest, f"{prog} {name}", cmd.help, cmd.children)
    return f"{prog} {name}", cmd, rest


def _import(prog: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("titok",):
            raise
        # A third-party package from an optional extra (torch for serving, tqdm for training) is not installed.
        extra = "train" if module_name.startswith("titok.model.") and module_name != "titok.model.hub" else "serve"
        raise SystemExit(
            f"{prog}: needs the Python package {exc.name!r}, which is not installed; "
            f"install the extras with: pip install 'titok-service[{extra}]'"
        ) from exc


def resolve(argv: Sequence[str], table: dict[str, Command] = COMMANDS) -> Callable[[], int]:
    """Choose the subcommand named in `argv`, import only its module, parse its arguments, and return a
    callable that runs it.

    `--help` and usage errors are answered by argparse (SystemExit 0 and 2), before anything runs.
    """
    prog, cmd, rest = _choose(argv, "titok", DESCRIPTION, table)
    module_name, _, func_name = cmd.target.partition(":")
    module = _import(prog, module_name)
    if func_name:  # the target parses its own arguments
        func = getattr(module, func_name)
        return lambda: func(rest)
    parser = argparse.ArgumentParser(prog=prog, description=cmd.help)
    module.add_args(parser)
    args = parser.parse_args(rest)
    return lambda: module.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = resolve(argv)()
    except SystemExit as exc:  # argparse's --help / usage errors: return the code rather than exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)  # noqa: T201
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a path the user gave (a data folder, a model file): one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"titok: {exc.strerror or exc}{where}", file=sys.stderr)  # noqa: T201
        code = 2
    except Exception as exc:
        from .core.errors import CoreError, ModelLoadError

        if not isinstance(exc, (CoreError, ModelLoadError)):
            raise
        print(f"titok: {exc}", file=sys.stderr)  # noqa: T201 - e.g. a file that is not a model artifact
        code = 2
    return 0 if code is None else int(code)


if __name__ == "__main__":  # `torchrun --nproc_per_node=N -m titok.cli train ...`
    sys.exit(main())
