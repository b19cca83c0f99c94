"""Script an exported artifact again with this checkout's model code, keeping its weights and its record.

The weights, `content_hash` (it names the weights, which do not change) and every recorded field (name, training,
eval, ...) are kept; `torch_version` and `export_check` are this export's. For an artifact whose scripted code a
newer model code fixes (the bundled ones were re-exported so when the scripted F.interpolate kept torch 2.11 from
loading them):

    python scripts/reexport_artifact.py service/models/default.pt service/models/default.pt

Errors: a file that is not an artifact (ModelLoadError), or an export check that fails (RuntimeError).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from titok.core.artifact import load_artifact
from titok.core.errors import ModelLoadError
from titok.model.config import TiTokConfig
from titok.model.export import export_model
from titok.model.tokenizer import build_model


def reexport(src: Path, dst: Path) -> dict:
    """Re-script src into dst; returns the new meta.json. src and dst may be the same file."""
    module, meta = load_artifact(src)
    cfg = TiTokConfig.from_dict(meta["config"])
    model = build_model(cfg)
    state = {k.removeprefix("model."): v.float() if v.is_floating_point() else v
             for k, v in module.state_dict().items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    kept = {k: v for k, v in meta.items() if k not in ("torch_version", "export_check")}
    return export_model(model, cfg, dst, kept, fp16_storage=meta.get("weights_dtype") == "float16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        meta = reexport(args.artifact, args.out)
    except (ModelLoadError, OSError, RuntimeError) as exc:
        p.exit(2, f"{p.prog}: {exc}\n")
    sys.stdout.write(f"{args.out}: {meta['name']}, content hash {meta['content_hash'][:12]}, export check "
                     f"{meta['export_check']}\n")
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
