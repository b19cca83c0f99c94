"""Property-based runs of the whole OpenAPI schema (schemathesis, all its default checks) against a live server.

Every operation in the schema gets a bounded number of generated requests, valid and invalid; a server error,
an undocumented status, content type or header, a response that does not match its schema, a valid request
refused or an invalid one accepted, each fails the test. Marked slow: about a minute together on 2 CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fuzz_hooks  # noqa: F401  (registers the image generator)
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from service_helpers import make_settings, serving

from titok.server.app import build_app

KEY = "fuzz-key-0123456789abcdef"
EXAMPLES = 100  # per operation and phase


@pytest.mark.slow
def test_every_operation_against_its_schema(tiny_artifact: Path) -> None:
    # The schema's own pytest integration (`from_fixture`) needs a pytest internal that pytest 9 removed, so
    # each operation's strategies are run here with Hypothesis directly; call_and_validate runs every default check.
    app = build_app(make_settings(tiny_artifact, api_keys=(KEY,), max_queue_size=4096))
    cases: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    with serving(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")  # schemathesis's own expectations, untuned
        operations = [op.ok() for op in schema.get_all_operations()]
        for op in operations:
            # An operation without a body or query has no invalid input to make (its key is probed by ignored_auth).
            modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if len(op.body) or len(op.query) else [])]
            for mode in modes:

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def run(case: schemathesis.Case) -> None:
                    cases[f"{case.method} {case.path}"] += 1
                    r = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})
                    statuses[f"{case.method} {case.path} {case.media_type or ''} {r.status_code}"] += 1

                run()
    print(f"\n{sum(cases.values())} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(cases.items())))
    print("\n".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    # The schema is exact enough that generated requests succeed, not only get refused (issue #16, item 7).
    for path in ("/encode", "/decode"):
        ok = sum(v for k, v in statuses.items() if k.startswith(f"POST {path} ") and k.endswith(" 200"))
        assert ok > EXAMPLES / 2, statuses
    assert {f"{op.method.upper()} {op.path}" for op in operations} == set(cases)


@pytest.mark.slow
def test_the_st_command_with_its_coverage_phase(tiny_artifact: Path, tmp_path: Path) -> None:
    """A plain `st run --checks all` (no configuration, every check with its own expectations) adds the
    coverage phase (boundary values, missing fields) and is what an operator would type."""
    here = Path(__file__).parent
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": f"{here}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}", "NO_COLOR": "1"}
    app = build_app(make_settings(tiny_artifact, api_keys=(KEY,), max_queue_size=4096))
    with serving(app) as url:
        st = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{url}/openapi.json", "--checks", "all",
              "--max-examples", str(EXAMPLES), "--workers", "1", "--seed", "1",
              "--header", f"Authorization: Bearer {KEY}"]
        proc = subprocess.run(st, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    summary = proc.stdout[proc.stdout.find("SUMMARY"):]
    print(summary)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    operations = sum(1 for item in app.openapi()["paths"].values() for method in item if method != "parameters")
    assert f"Tested: {operations}" in summary and "Coverage" in summary



@pytest.mark.slow
def test_the_token_budgets_of_a_prefix_model_against_its_schema(tmp_path: Path) -> None:
    """/encode's num_tokens and target_psnr and /decode's prefixes, generated from the bounds the schema gives
    for a prefix-decodable model; every default check runs, as above."""
    from hypothesis import assume
    from prefix_helpers import K, write_toy_prefix_artifact

    model = write_toy_prefix_artifact(tmp_path / "toy-prefix.pt")
    app = build_app(make_settings(model, api_keys=(KEY,), max_queue_size=4096))
    statuses: Counter[str] = Counter()
    budgets: Counter[str] = Counter()
    with serving(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        operations = [op.ok() for op in schema.get_all_operations() if op.ok().path in ("/encode", "/decode")]
        params = {p["name"]: p for p in app.openapi()["paths"]["/encode"]["post"]["parameters"]}
        assert params["num_tokens"]["schema"]["maximum"] == K  # the bounds the generator works from
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def run(case: schemathesis.Case) -> None:
                    query = case.query or {}
                    # The one rule the schema cannot state: not both budgets at once (a 422, tested by hand).
                    assume(mode is not GenerationMode.POSITIVE or not {"num_tokens", "target_psnr"} <= set(query))  # noqa: B023
                    budgets.update(name for name in ("num_tokens", "target_psnr") if name in query)
                    r = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})
                    statuses[f"{case.method} {case.path} {r.status_code}"] += 1

                run()
    print("\n".join(f"{k}: {v}" for k, v in sorted(statuses.items())), budgets)
    assert budgets["num_tokens"] > 10 and budgets["target_psnr"] > 10
    assert statuses["POST /encode 200"] > EXAMPLES / 4 and statuses["POST /decode 200"] > EXAMPLES / 4
