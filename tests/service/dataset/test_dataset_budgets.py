"""`titok tokenize --num-tokens / --target-psnr` and reading their output back (issue #20, item 4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_helpers import photo, write_folder
from PIL import Image
from prefix_helpers import K, prefix_artifact, psnr_by_k  # noqa: F401  (prefix_artifact: fixture)

from titok.cli import main
from titok.core.codec import load_image
from titok.core.engine import Engine
from titok.dataset import load_ragged_tokens, load_tokens, read_dir_meta
from titok.dataset.inputs import DatasetError


def run(folder: Path, out: Path, model: Path, *flags: str) -> int:
    return main(["tokenize", str(folder), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--workers", "0", "--batch-size", "3", "--shard-size", "4", *flags])


@pytest.fixture(scope="module")
def prefix_engine(prefix_artifact: Path) -> Engine:  # noqa: F811
    eng = Engine.load(prefix_artifact, "cpu", torch_threads=1)
    yield eng
    eng.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "pics", {f"{i}.png": photo(i) for i in range(7)})


def model_inputs(folder: Path, keys: list[str]) -> np.ndarray:
    return np.stack([load_image((folder / k).read_bytes(), 32) for k in keys])


def test_num_tokens_keeps_each_images_first_k(tmp_path: Path, folder: Path, prefix_artifact: Path,  # noqa: F811
                                              prefix_engine: Engine) -> None:
    assert run(folder, tmp_path / "out", prefix_artifact, "--num-tokens", "3") == 0
    assert read_dir_meta(tmp_path / "out")["budget"] == {"num_tokens": 3}
    keys, tokens = load_tokens(tmp_path / "out")
    assert tokens.shape == (7, 3)
    assert tokens.tolist() == prefix_engine.run("encode", model_inputs(folder, keys))[:, :3].tolist()
    keys2, ids, offsets = load_ragged_tokens(tmp_path / "out")  # the ragged form reads fixed lengths too
    assert keys2 == keys and offsets.tolist() == list(range(0, 22, 3)) and ids.tolist() == tokens.ravel().tolist()


def test_target_psnr_stores_rows_of_their_own_length_with_psnr(tmp_path: Path, folder: Path,
                                                               prefix_artifact: Path,  # noqa: F811
                                                               prefix_engine: Engine) -> None:
    out = tmp_path / "out"
    assert run(folder, out, prefix_artifact, "--target-psnr", "14") == 0
    table = pq.read_table(sorted(out.glob("*.parquet"))[0])
    kind = table.schema.field("tokens").type
    assert pa.types.is_list(kind) and kind.value_type == pa.uint8()  # list<uint16> for a 4096-entry codebook
    assert {"num_tokens", "psnr", "reached"} <= set(table.column_names)
    assert json.loads(table.schema.metadata[b"titok"])["budget"] == {"target_psnr": 14.0}
    keys, ids, offsets = load_ragged_tokens(out)
    images = model_inputs(folder, keys)
    full = prefix_engine.run("encode", images)
    lengths = np.diff(offsets)
    every = {r["key"]: r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    for i, key in enumerate(keys):
        curve = psnr_by_k(prefix_engine, images[i])
        reaching = [k for k in range(1, K + 1) if curve[k - 1] >= 14]
        k = reaching[0] if reaching else K
        assert lengths[i] == k == every[key]["num_tokens"]
        assert ids[offsets[i]:offsets[i + 1]].tolist() == full[i, :k].tolist()
        assert every[key]["reached"] == bool(reaching)
        assert every[key]["psnr"] == pytest.approx(curve[k - 1], abs=1e-3)
    assert len(set(lengths.tolist())) > 1  # the photos really need different lengths
    with pytest.raises(DatasetError, match="load_ragged_tokens"):
        load_tokens(out)
    # detokenize decodes each row from its own prefix
    pngs = tmp_path / "pngs"
    assert main(["detokenize", str(out), "--out", str(pngs), "--model", str(prefix_artifact), "--device", "cpu",
                 "--first", "7"]) == 0
    for i, key in enumerate(keys):
        got = np.asarray(Image.open(pngs / f"{key}.png"))
        assert np.array_equal(got, prefix_engine.run("decode", full[i:i + 1, :lengths[i]])[0])


def test_a_rerun_with_another_policy_is_refused_and_the_same_one_resumes(tmp_path: Path, folder: Path,
                                                                         prefix_artifact: Path,  # noqa: F811
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run(folder, out, prefix_artifact, "--target-psnr", "14") == 0
    capsys.readouterr()
    for flags, policy in ((["--target-psnr", "20"], "target_psnr=20"), (["--num-tokens", "4"], "num_tokens=4"),
                          ([], "all tokens")):
        assert run(folder, out, prefix_artifact, *flags) == 2
        err = capsys.readouterr().err
        assert "target_psnr=14" in err and policy in err and "--overwrite" in err
    assert run(folder, out, prefix_artifact, "--target-psnr", "14") == 0
    assert re.search(r"shards skipped \(already complete\) +2", capsys.readouterr().out)
    assert len(load_ragged_tokens(out)[0]) == 7


@pytest.mark.parametrize(("flags", "words"), [
    (["--num-tokens", "0"], f"--num-tokens is 0; it must be in [1, {K}]"),
    (["--num-tokens", str(K + 1)], f"it must be in [1, {K}]"),
    (["--target-psnr", "nan"], "finite number of dB in (0, 100]"),
    (["--target-psnr", "-5"], "(0, 100]"),
    (["--target-psnr", "500"], "(0, 100]"),
])
def test_bad_budgets_stop_the_job_before_any_work(tmp_path: Path, folder: Path, prefix_artifact: Path,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str], flags: list[str],
                                                  words: str) -> None:
    assert run(folder, tmp_path / "out", prefix_artifact, *flags) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before the output directory was made


def test_both_budgets_or_a_fixed_length_model_are_refused(tmp_path: Path, folder: Path, tiny_artifact: Path,
                                                          prefix_artifact: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(folder, tmp_path / "out", prefix_artifact, "--num-tokens", "2", "--target-psnr", "20") == 2
    assert "--target-psnr: not allowed with argument --num-tokens" in capsys.readouterr().err
    assert run(folder, tmp_path / "out2", tiny_artifact, "--num-tokens", "2") == 2
    err = capsys.readouterr().err
    assert "--num-tokens needs a prefix-decodable model" in err and "exactly 8 tokens" in err
