"""The built wheel, installed into a fresh venv, used the way a new user would: in a folder that holds a
`model.py` and a `service.py` of its own (nanoGPT's model.py, say). Nothing of ours may be shadowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_beside_a_model_py_and_a_service_py(tmp_path: Path) -> None:
    # The wheel from what the Dockerfile copies (no build leftovers of the checkout).
    context = tmp_path / "context"
    for name in ("pyproject.toml", "README.md", "model", "service"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(src, context / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(context)], capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")

    # A fresh venv; its dependencies come from this one (offline), the package only from the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Every site-packages this interpreter sees (a .pth of a .pth is not followed), and no checkout path.
    deps = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (site / "deps.pth").write_text("".join(p + "\n" for p in deps))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=600,
                             check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (site / "service").exists() and not (site / "model").exists()  # one top-level name: titok

    work = tmp_path / "project"
    work.mkdir()
    (work / "model.py").write_text("raise SystemExit('the user model.py was imported')\n")
    (work / "service.py").write_text("raise SystemExit('the user service.py was imported')\n")
    # Outside the checkout, with the working directory first on sys.path (python -c puts it there).
    code = ("from titok import Tokenizer, TitokClient, load_tokens, ModelLoadError\n"
            "import titok.model.hub, titok.server.app, titok.dataset.cli\n"
            "print(Tokenizer.__module__, TitokClient.__module__, load_tokens.__module__)\n")
    run = subprocess.run([str(python), "-c", code], cwd=work, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["titok.core.tokenizer", "titok.client.sync", "titok.dataset.reader"]
    cli = subprocess.run([str(env_dir / "bin" / "titok"), "--help"], cwd=work, capture_output=True, text=True,
                         timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert cli.returncode == 0 and cli.stdout.startswith("usage: titok"), cli.stderr[-3000:]
    models = subprocess.run([str(env_dir / "bin" / "titok"), "models"], cwd=work, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert models.returncode == 0 and "yucornetto/tokenizer_titok_l32_imagenet" in models.stdout, models.stderr
    serve = subprocess.run([str(env_dir / "bin" / "titok"), "serve", "--model", str(work / "missing.pt")],
                           cwd=work, capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert serve.returncode == 2 and "model file not found" in serve.stderr, serve.stderr[-3000:]
