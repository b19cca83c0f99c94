"""Thread and process counts default to the CPUs the process may use, not the machine's count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from titok.core.cpus import available_cpus

PROBE = """
import json, os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # as `taskset -c N` or a one-CPU cpuset gives it
from titok.core.cpus import available_cpus
from titok.core.engine import Engine, default_workers
from titok.dataset.cli import tokenize_parser
from titok.dataset.local import JobOptions
engine = Engine.load(sys.argv[1], "cpu", "float32", workers=0)
print(json.dumps({"machine": os.cpu_count(), "available": available_cpus(), "workers": default_workers("cpu"),
                  "engine_workers": engine.workers, "torch_threads": engine.torch_threads,
                  "tokenize_workers": tokenize_parser().parse_args(["in", "--out", "o"]).workers,
                  "job_workers": JobOptions(out="o").workers}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_every_default_follows_the_cpus_the_process_may_use(tiny_artifact: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tiny_artifact)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got.pop("machine") == os.cpu_count()  # what the old defaults read, whatever the affinity
    assert got == {"available": 1, "workers": 1, "engine_workers": 1, "torch_threads": 1, "tokenize_workers": 1,
                   "job_workers": 1}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_here_it_is_at_least_one_and_at_most_the_cpus_of_the_affinity() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0)) <= (os.cpu_count() or 1)
