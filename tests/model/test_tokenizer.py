import pytest
import torch

from titok.model.config import PRESETS, TiTokConfig, get_preset
from titok.model.tokenizer import TiTok, build_model

# Parameter counts of our own presets, pinned so that a change of architecture is a visible decision.
# (The published presets are pinned against the reference's counts in test_reference.py.)
EXPECTED_PARAMS = {"tiny": 7_418_508, "seed": 338_067_456}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_gives_k_tokens(name):
    cfg = get_preset(name)
    with torch.device("meta"):
        model = build_model(cfg)
        x = torch.empty(2, 3, cfg.image_size, cfg.image_size)
        tokens = model.encode_indices(x)
        pixels = model.decode_indices(torch.zeros(2, cfg.num_tokens, dtype=torch.long))
    assert tokens.shape == (2, cfg.num_tokens) and tokens.dtype == torch.int64
    assert pixels.shape == (2, 3, cfg.image_size, cfg.image_size)
    if name in EXPECTED_PARAMS:
        assert count(model) == EXPECTED_PARAMS[name]


def test_seed_preset_sizes():
    cfg = get_preset("seed")
    assert (cfg.image_size, cfg.patch_size, cfg.enc_width, cfg.enc_heads, cfg.enc_depth) == (256, 64, 1024, 16, 12)
    assert (cfg.codebook_size, cfg.num_tokens, cfg.beta) == (8192, 16, 0.25)


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = get_preset("tiny", num_tokens=64)
    assert TiTokConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        TiTokConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_preset("tiny", image_size=100)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_forward_shapes_and_training_outputs(micro_cfg):
    cfg = micro_cfg()
    model = TiTok(cfg)
    x = torch.rand(3, 3, 32, 32)
    recon, idx, vq_loss, z = model(x)
    assert recon.shape == x.shape and idx.shape == (3, cfg.num_tokens) and z.shape == (3, cfg.num_tokens, cfg.code_dim)
    assert vq_loss.ndim == 0
    # Token order matters: the decoder is not invariant to permuting the 1D sequence.
    model.eval()
    with torch.no_grad():
        t = model.encode_indices(x)
        a = model.decode_indices(t)
        b = model.decode_indices(t.flip(1))
    assert not torch.allclose(a, b)


def test_encode_decode_in_eval_is_deterministic_and_consistent_with_forward(micro_cfg):
    model = TiTok(micro_cfg()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        recon, idx, _, _ = model(x)
        assert torch.equal(model.encode_indices(x), idx)
        assert torch.allclose(model.decode_indices(idx), recon, atol=1e-5)
