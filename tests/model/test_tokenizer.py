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


def test_a_masked_decode_of_all_k_codes_equals_decoding_the_prefix():
    """Decoder(keep=...) (static shapes, for torch.compile in training) gives what decoding the first k codes gives,
    for every k, with the low-frequency path on; a keep of all True is the full decode."""
    from titok.model.config import get_preset
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=2, dec_heads=2, codebook_size=64, lowfreq_size=4, tail_drop=True)
    torch.manual_seed(0)
    model = TiTok(cfg).eval()
    with torch.no_grad():
        q = model.quantize.lookup(torch.randint(0, 64, (3, 8)))
        for k in range(1, 9):
            keep = torch.arange(8) < k
            sliced, masked = model.decoder(q[:, :k]), model.decoder(q, keep)
            assert torch.allclose(sliced, masked, atol=1e-5), (k, float((sliced - masked).abs().max()))
        assert not torch.allclose(model.decoder(q[:, :3]), model.decoder(q), atol=1e-3)  # the prefix matters
        per_row = torch.stack([torch.arange(8) < k for k in (2, 5, 8)])
        rows = model.decoder(q, per_row)
        for i, k in enumerate((2, 5, 8)):
            assert torch.allclose(rows[i], model.decoder(q[i:i + 1, :k])[0], atol=1e-5)
