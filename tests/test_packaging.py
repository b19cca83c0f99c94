"""Packaging and deployment files agree with each other and with the code.

No Docker engine runs here, so these tests check what can be checked without one: the files parse,
everything they refer to exists, ports, settings and metric names match the service's own
definitions, and the wheel that the image installs carries the bundled model.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from titok import cli, errors
from titok.client.core import API_KEY_ENV
from titok.core.models import CACHE_ENV
from titok.server.metrics import Metrics
from titok.settings import DEFAULT_MODEL_PATH, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_GPU = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())  # the GPU override
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVICE = "titok"  # the compose service that runs the tokenizer


# ---------------------------------------------------------------- helpers


def dockerfile_instructions(text: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # Docker drops comment lines, even inside continuations
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        out.append((keyword.upper(), args.strip()))
        logical = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list, or the shell form split like a shell would."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources() -> list[str]:
    """Build-context paths named by COPY/ADD (not those copied from another stage)."""
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = exec_form(args)
        if any(w.startswith("--from") for w in words):
            continue
        sources += [os.path.normpath(w) for w in words if not w.startswith("--")][:-1]
    return sources


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern that matches a parent matches its files."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) for each bind mount of a compose service (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith((".", "/")):
            mounts.append((host, container))
    return mounts


def metric_catalogue() -> dict[str, tuple[str, set[str]]]:
    """Every exposed series name of the service -> (family name, its label names)."""
    metrics = Metrics()
    labels = {
        m._name: set(m._labelnames)  # prometheus_client keeps label names private
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    catalogue: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        extra = {"le"} if family.type == "histogram" else set()
        for suffix in suffixes.get(family.type, ("",)):
            catalogue[family.name + suffix] = (family.name, labels.get(family.name, set()) | extra)
        for sample in family.samples:
            catalogue.setdefault(sample.name, (family.name, labels.get(family.name, set())))
    return catalogue


def readme_code_lines() -> list[str]:
    """The non-empty lines of the README's shell code blocks (```bash, or no language)."""
    lines, language = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "bash")
        elif language == "bash" and line.strip():
            lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", " ")  # continuation lines
    return [" ".join(line.split()) for line in joined.splitlines()]


def readme_test_command() -> str:
    found = [line for line in readme_code_lines() if "pytest" in line and line.startswith("pip install")]
    assert len(found) == 1, f"expected one install-lint-test command in the README, found {found}"
    return found[0]


def readme_table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table under `## heading` in the README."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


# ---------------------------------------------------------------- docker compose


def test_compose_gpu_override_reserves_a_gpu() -> None:
    devices = COMPOSE_GPU["services"][SERVICE]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d.get("count") for d in devices)


def test_compose_healthchecks_readyz() -> None:
    # The image's HEALTHCHECK applies unless compose replaces it; any replacement must ask /readyz too.
    test = COMPOSE["services"][SERVICE].get("healthcheck", {}).get("test")
    assert test is None or (test[0] in ("CMD", "CMD-SHELL") and any("/readyz" in part for part in test))
    assert any(keyword == "HEALTHCHECK" and "/readyz" in args for keyword, args in final_stage())


def test_compose_mounts_a_model_volume_and_selects_the_device() -> None:
    service = COMPOSE["services"][SERVICE]
    assert any(container == "/models" for _, container in bind_mounts(service))
    assert service["environment"]["TITOK_DEVICE"] == "${TITOK_DEVICE:-auto}"  # auto unless the shell says
    assert COMPOSE_GPU["services"][SERVICE]["environment"]["TITOK_DEVICE"] == "cuda"
    # The example for a custom model points into that volume.
    assert re.search(r"#\s*TITOK_MODEL_PATH:\s*/models/\S+\.pt", (ROOT / "docker-compose.yml").read_text())


def test_compose_builds_this_dockerfile_and_exposes_its_port_to_the_balancer() -> None:
    service = COMPOSE["services"][SERVICE]
    build = service["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == ROOT / "Dockerfile"
    # No host port on the replicas (--scale); the balancer publishes the service's port.
    assert {int(p) for p in service["expose"]} == {exposed_port()} and "ports" not in service
    assert {int(str(p).split(":")[-1]) for p in COMPOSE["services"]["lb"]["ports"]} == {exposed_port()}


def test_every_file_the_compose_file_mounts_exists() -> None:
    for name, service in COMPOSE["services"].items():
        for host, _ in bind_mounts(service):
            assert (ROOT / host).exists(), f"{name} mounts {host}, which is not in the repository"


def test_grafana_provisioning_is_wired() -> None:
    grafana = COMPOSE["services"]["grafana"]
    mounts = {container: ROOT / host for host, container in bind_mounts(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = datasources[0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]
    dashboards = []
    for provider_file in sorted((provisioning / "dashboards").glob("*.yml")):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            host_dir = mounts[provider["options"]["path"]]  # the provider reads a mounted folder
            dashboards += sorted(host_dir.glob("*.json"))
    assert dashboards, "no dashboard JSON reaches Grafana"
    uid = datasources[0]["uid"]
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]


# ---------------------------------------------------------------- Prometheus and the dashboard


def test_prometheus_scrapes_the_service_port() -> None:
    prometheus = COMPOSE["services"]["prometheus"]
    config_host = dict((c, h) for h, c in bind_mounts(prometheus))["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / config_host).read_text())
    targets = []
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", []):
            targets += [tuple(t.rsplit(":", 1)) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            targets += [(name, str(dns["port"])) for name in dns["names"]]
    assert targets
    for host, port in targets:
        assert host in COMPOSE["services"], f"Prometheus scrapes {host}, not a compose service"
        assert int(port) == exposed_port()


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/titok.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_dashboard_covers_the_operators_questions() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (endpoint, status) (rate(titok_requests_total",
        "histogram_quantile(0.5, sum by (le, endpoint) (rate(titok_request_duration_seconds_bucket{",
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(titok_request_duration_seconds_bucket{",
        "titok_batch_size_bucket",
        "titok_queue_depth",
        "sum by (reason) (rate(titok_rejections_total",
    ):
        assert needle in exprs


def test_every_dashboard_metric_and_label_exists_in_the_service() -> None:
    catalogue = metric_catalogue()
    for expr in dashboard_exprs():
        names = re.findall(r"\btitok_[a-z0-9_]+", expr)
        assert names, expr
        for name in names:
            assert name in catalogue, f"{name} (in {expr!r}) is not a metric of service/server/metrics.py"
        used = [g.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for g in group.split(",")]
        used += re.findall(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)", expr)  # label matchers in selectors
        for label in set(used) - {"instance", "job"}:  # those two are added by Prometheus
            for name in names:
                assert label in catalogue[name][1], f"{name} has no label {label!r} (in {expr!r})"


def test_every_metric_named_in_deploy_files_exists() -> None:
    """Kubernetes (HPA, Prometheus adapter), compose and the dashboard name only series the service exposes."""
    catalogue = metric_catalogue()
    named = {(p.relative_to(ROOT).as_posix(), m) for p in deploy_files()
             for m in re.findall(r"\btitok_[a-z0-9_]+", p.read_text())}
    assert {m for _, m in named} >= {"titok_queue_depth", "titok_ready", "titok_requests_total"}
    unknown = sorted((path, m) for path, m in named if m not in catalogue)
    assert not unknown, f"not metrics of service/server/metrics.py: {unknown}"


def test_readme_lists_every_metric() -> None:
    documented = {row[0].strip("`") for row in readme_table("Metrics")}
    families = {name for name, _ in metric_catalogue().values()}
    exposed = set(metric_catalogue())
    for family in families:
        assert any(d == family or d in exposed and d.startswith(family) for d in documented), family
    for name in documented:
        assert name in exposed or name in families, f"README documents {name}, which the service does not expose"


# ---------------------------------------------------------------- Dockerfile


def exposed_port() -> int:
    ports = [int(args.split("/")[0]) for keyword, args in final_stage() if keyword == "EXPOSE"]
    assert len(ports) == 1
    return ports[0]


def test_dockerfile_runs_on_a_cuda_pytorch_base() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, flags=re.M))
    images = [re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], f.split()[0]) for f in froms]
    assert all(image.startswith("pytorch/pytorch:") and "cuda" in image for image in images)


def test_dockerfile_runs_one_non_root_serving_process() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = exec_form(next(args for keyword, args in reversed(stage) if keyword == "CMD"))
    assert cmd[:2] == ["titok", "serve"]
    # Host and port as settings, so TITOK_PORT (compose, Kubernetes) is not overridden by the command line.
    env = dict(re.findall(r"(TITOK_\w+)=(\S+)", " ".join(args for keyword, args in stage if keyword == "ENV")))
    assert "--port" not in cmd and env["TITOK_PORT"] == str(exposed_port())
    assert "--host" not in cmd and env["TITOK_HOST"] == "0.0.0.0"
    # One worker: the batching queue lives in one process.
    assert "--workers" not in cmd or cmd[cmd.index("--workers") + 1] == "1"
    assert not [k for k, _ in stage if k == "ENTRYPOINT"]


def test_dockerfile_healthcheck_asks_readyz_without_curl() -> None:
    checks = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/readyz" in checks[0] and "TITOK_PORT" in checks[0]
    # python3: a Debian or Ubuntu base has no `python`; the base contract guarantees python3.
    assert "curl" not in checks[0] and exec_form(checks[0].split("CMD", 1)[1].strip())[0] == "python3"


def test_dockerfile_installs_only_serving_dependencies() -> None:
    installs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN" and "pip install" in args]
    assert installs
    for args in installs:
        assert "[dev]" not in args and "[train]" not in args, args
        # torch only as a constraint to the base's own build, never a requirement installed here
        words = args.split("pip install", 1)[1].split(";", 1)[0].split()
        assert words[words.index("--constraint") + 1] == "/tmp/keep-torch.txt", args
        assert not [w for w in words if re.match(r"[\"']?torch\b", w)], args


def test_every_file_the_dockerfile_copies_exists_and_reaches_the_build() -> None:
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source, patterns), f".dockerignore excludes {source}"
    assert not dockerignored("service/models/default.pt", patterns)


def test_dockerignore_keeps_bulky_and_private_things_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/HEAD", ".venv/bin/python", "venv/bin/python", "runs/x/ckpt.pt", "photos/a.jpg"):
        assert dockerignored(path, patterns), path


def deploy_files() -> list[Path]:
    """Every file that deploys the service: the Dockerfile, the compose files, deploy/ (Kubernetes too)."""
    return [ROOT / "Dockerfile", *sorted(ROOT.glob("docker-compose*.yml")),
            *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]


def test_settings_named_in_deploy_files_exist() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for path in [*deploy_files(), ROOT / "README.md"]:
        for name in re.findall(r"\bTITOK_([A-Z0-9_]+)", path.read_text()):
            if f"TITOK_{name}" in (API_KEY_ENV, CACHE_ENV):  # the client's and the model cache's, not the server's
                continue
            assert name in fields, f"{path} names TITOK_{name}, which is not a setting in service/settings.py"


# ---------------------------------------------------------------- README


def test_readme_documents_every_setting_with_its_default() -> None:
    rows = {row[0].strip("`"): row for row in readme_table("Settings")}
    for name, field in Settings.model_fields.items():
        row = rows.get(f"TITOK_{name.upper()}")
        assert row, f"README's settings table lacks TITOK_{name.upper()}"
        if isinstance(field.default, Path):
            assert field.default.relative_to(ROOT).as_posix() in row[1]
        elif field.default == "":
            assert row[1] == "unset", (name, row[1])
        else:  # a bool as it is written in the environment: true, false
            default = str(field.default).lower() if isinstance(field.default, bool) else field.default
            assert f"`{default}`" == row[1], (name, row[1])
    assert len(rows) == len(Settings.model_fields)


def test_readme_documents_every_error_code_and_status() -> None:
    rows = readme_table("API")
    statuses = {row[0]: row for row in rows if row[0].isdigit()}
    for status in ("200", "400", "404", "405", "413", "415", "422", "500", "503", "504"):
        assert status in statuses
    assert "Retry-After" in statuses["503"][1]
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.ServiceError) and cls is not errors.ServiceError:
            assert f"`{cls.code}`" in statuses[str(cls.status)][2], f"{cls.code} ({cls.status}) not in README"
    for code, status in errors.CORE_STATUS.items():  # the core's plain errors, as the HTTP door answers them
        assert f"`{code}`" in statuses[str(status)][2], f"{code} ({status}) not in README"


def test_readme_quick_start_commands() -> None:
    lines = readme_code_lines()
    assert "pip install torch==2.13.0 && pip install '.[serve]' && titok serve" in lines
    test_command = readme_test_command()
    assert "ruff check" in test_command and test_command.endswith("pytest")


def test_readme_titok_commands_parse() -> None:
    """Every `titok ...` line in the README names a real subcommand with options it accepts."""
    checked = 0
    for line in readme_code_lines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # leading VAR=value assignments
            words.pop(0)
        if not words or words[0] != "titok" or "..." in words:
            continue
        try:
            cli.resolve(words[1:])
        except SystemExit as exc:  # --help exits 0 after printing; anything else is a usage error
            assert exc.code == 0, f"README: `{line}` is not a valid command ({exc.code})"
        checked += 1
    assert checked >= 5


def test_readme_links_resolve() -> None:
    """Every relative link and image in the README points at a file in the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert "model/assets/reconstructions.png" in local and "model/MODEL_CARD.md" in local
    for target in local:
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


def test_readme_yaml_and_toml_examples_parse() -> None:
    blocks = re.findall(r"^```(yaml|toml)\n(.*?)^```", README, flags=re.S | re.M)
    assert blocks
    for language, block in blocks:
        assert yaml.safe_load(block) if language == "yaml" else tomllib.loads(block)


# ---------------------------------------------------------------- CI and pyproject


def test_ci_script_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci/run"
    assert os.access(ci, os.X_OK), ".ci/run is not executable"
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert "python3 -m venv" in text
    assert readme_test_command() in text.splitlines()
    assert "|| true" not in text


def test_console_script_and_package_data_globs() -> None:
    assert PYPROJECT["project"]["scripts"] == {"titok": "titok.cli:main"}
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["titok"]
    assert any(fnmatch.fnmatch("models/default.pt", g) for g in globs)
    assert not any("pyyaml" in d.lower() or "pytest" in d.lower() for d in PYPROJECT["project"]["dependencies"])


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=\[;!~]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_a_client_only_install_pulls_no_torch_web_framework_or_pyarrow() -> None:
    """`pip install titok-service` / `[client]`: what the client imports, and nothing of the server's."""
    import ast

    extras = PYPROJECT["project"]["optional-dependencies"]
    base = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert base == _requirement_names(extras["client"]) == {"httpx", "numpy", "pillow"}
    assert {"torch", "fastapi", "uvicorn", "pyarrow", "huggingface-hub"} <= _requirement_names(extras["serve"])
    # Every third-party module the client's files import at module level is in the bare install.
    imported = set()
    for path in [*(ROOT / "service/client").glob("*.py"), ROOT / "service/core/arrays.py",
                 ROOT / "service/core/errors.py", ROOT / "service/__init__.py"]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"service", "titok", "__future__"}  # ours, either name
    assert {"PIL" if n == "pillow" else n for n in base} >= third_party


def test_default_model_is_in_the_repository() -> None:
    """`titok serve`, the Dockerfile and the README's quick start all serve this file."""
    assert DEFAULT_MODEL_PATH == ROOT / "service/models/default.pt"
    assert DEFAULT_MODEL_PATH.is_file(), "service/models/default.pt is missing"


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Build the wheel from exactly what the Dockerfile copies; its files by name (content for the small ones)."""
    tmp = tmp_path_factory.mktemp("wheel")
    context = tmp / "context"
    for source in copy_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / source)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return {n: (zf.read(n) if n.endswith((".txt", ".py")) else b"") for n in zf.namelist()}


@pytest.mark.slow
def test_wheel_has_the_console_script_and_both_packages(wheel_files: dict[str, bytes]) -> None:
    assert {"titok/cli.py", "titok/__main__.py", "titok/server/app.py", "titok/model/export.py"} <= set(wheel_files)
    entry_points = next(v.decode() for n, v in wheel_files.items() if n.endswith(".dist-info/entry_points.txt"))
    assert re.search(r"^titok = titok\.cli:main$", entry_points, flags=re.M)


@pytest.mark.slow
def test_wheel_carries_the_default_model(wheel_files: dict[str, bytes]) -> None:
    assert "titok/models/default.pt" in wheel_files, "the image would have no model to serve"


def test_wheel_carries_the_web_page(wheel_files: dict[str, bytes]) -> None:
    from titok.server import ui

    served = {"index.html", *ui._ASSETS}  # noqa: SLF001
    assert {f"titok/server/ui/{name}" for name in served} <= set(wheel_files), "a wheel install would serve no page"


@pytest.mark.slow
def test_wheel_carries_the_offline_docs_assets(wheel_files: dict[str, bytes]) -> None:
    """/docs loads Swagger UI from the package, never from a CDN: its files and licence ship in the wheel."""
    assets = {f"titok/server/static/swagger-ui/{name}" for name in
              ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE")}
    assert assets <= set(wheel_files)
