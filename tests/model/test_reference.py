"""The published TiTok layout (model/reference.py): key names, sizes and the quirks, pinned on small tensors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from titok.model.config import get_preset
from titok.model.reference import (
    PatchesToImage,
    PixelDecoder,
    ReferenceQuantizer,
    ResnetBlock,
    latents_to_conv_input,
    same_conv,
)
from titok.model.tokenizer import build_model

# The reference L-32 state dict (key, shape), from building the reference code (see the brief in shared/).
TSV = Path(__file__).parent / "titok-l32-state-dict.tsv"

# Parameter counts of the published models (reference brief, section 3).
PUBLISHED = {
    "titok-l-32": (641_054_735, 32, 4096),
    "titok-b-64": (204_814_095, 64, 4096),
    "titok-s-128": (83_674_639, 128, 4096),
    "titok-bl-64-vq8k": (390.0e6, 64, 8192),
    "titok-bl-128-vq8k": (390.2e6, 128, 8192),
    "titok-sl-256-vq8k": (330.3e6, 256, 8192),
}


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(get_preset(name))


def _tsv_layout() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in TSV.read_text().splitlines() if line.strip()]
    return {key: tuple(int(n) for n in re.findall(r"\d+", shape)) for key, shape in rows}


def test_l32_layout_is_the_reference_state_dict() -> None:
    sd = _meta_model("titok-l-32").state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == _tsv_layout()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_presets_have_the_reference_sizes(name: str) -> None:
    params, num_tokens, codebook = PUBLISHED[name]
    model = _meta_model(name)
    n = sum(p.numel() for p in model.parameters())
    if isinstance(params, int):
        assert n == params
    else:  # published as millions, one decimal
        assert round(n / 1e6, 1) == round(params / 1e6, 1)
    cfg = get_preset(name)
    assert (cfg.num_tokens, cfg.codebook_size, cfg.image_size) == (num_tokens, codebook, 256)
    assert cfg.legacy == (codebook == 4096) and ("pixel_decoder.conv_in.weight" in model.state_dict()) == cfg.legacy
    with torch.no_grad():  # shapes only: the meta device computes nothing
        tokens = model.encode_indices(torch.empty(2, 3, 256, 256, device="meta"))
        assert tokens.shape == (2, cfg.num_tokens) and tokens.dtype == torch.int64
        assert model.decode_indices(tokens).shape == (2, 3, 256, 256)


def test_legacy_reshape_is_a_reshape_not_a_permute() -> None:
    x = torch.arange(6.0).reshape(1, 2, 3)  # B=1, K=2 tokens of W=3: token 0 = [0, 1, 2], token 1 = [3, 4, 5]
    legacy = latents_to_conv_input(x, legacy=True)  # (B, W, K, 1)
    assert legacy.shape == (1, 3, 2, 1)
    # element [c, k] is token (c*K + k) // W, channel (c*K + k) % W: "position" 0 mixes both tokens
    assert legacy[0, :, :, 0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    fixed = latents_to_conv_input(x, legacy=False)
    assert fixed[0, :, :, 0].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_direct_pixel_head_rearrange() -> None:
    """einops 'b (p1 p2 c) h w -> b c (h p1) (w p2)', checked element by element."""
    p, h, w = 2, 2, 3
    x = torch.arange(float(p * p * 3 * h * w)).reshape(1, p * p * 3, h, w)
    y = PatchesToImage(p)(x)
    assert y.shape == (1, 3, h * p, w * p)
    for c in range(3):
        for i in range(h):
            for j in range(w):
                for p1 in range(p):
                    for p2 in range(p):
                        assert y[0, c, i * p + p1, j * p + p2] == x[0, (p1 * p + p2) * 3 + c, i, j]


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("size", [5, 8])
def test_same_padding_is_tf_same_for_stride_1(kernel: int, size: int) -> None:
    torch.manual_seed(0)
    conv = same_conv(4, 6, kernel, bias=True)
    x = torch.randn(1, 4, size, size)
    stride, dilation = 1, 1
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)  # TF "SAME"
    padded = F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2])
    torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, conv.bias), rtol=0, atol=1e-6)
    assert total // 2 == kernel // 2


def _group_norm_by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    b, c, h, w = x.shape
    g = x.reshape(b, 32, -1)
    mean = g.mean(-1, keepdim=True)
    var = g.var(-1, unbiased=False, keepdim=True)
    g = (g - mean) / torch.sqrt(var + eps)
    return g.reshape(b, c, h, w) * weight[None, :, None, None] + bias[None, :, None, None]


def test_resnet_block_eps_and_shortcut_on_the_output() -> None:
    torch.manual_seed(0)
    block = ResnetBlock(32, 64).eval()
    for norm in (block.norm1, block.norm2):
        assert (norm.num_groups, norm.eps) == (32, 1e-6)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    assert block.nin_shortcut is not None and block.nin_shortcut.weight.shape == (64, 64, 1, 1)
    assert block.conv1.bias is None and block.conv2.bias is None and block.nin_shortcut.bias is None
    # Tiny variance, so that eps 1e-6 vs the default 1e-5 shows in the result.
    x = 1e-3 * torch.randn(1, 32, 4, 4)
    h = _group_norm_by_hand(x, block.norm1.weight, block.norm1.bias, 1e-6)
    h = F.conv2d(F.silu(h), block.conv1.weight, padding=1)
    h = _group_norm_by_hand(h, block.norm2.weight, block.norm2.bias, 1e-6)
    h = F.conv2d(F.silu(h), block.conv2.weight, padding=1)
    expected = h + F.conv2d(h, block.nin_shortcut.weight)  # the shortcut of the OUTPUT, the input unused
    with torch.no_grad():
        got = block(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        wrong_eps = F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, eps=1e-5)
        assert not torch.allclose(wrong_eps, F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, eps=1e-6),
                                  rtol=1e-3, atol=1e-3)


def test_resnet_block_same_width_keeps_the_input_as_residual() -> None:
    torch.manual_seed(0)
    block = ResnetBlock(32, 32).eval()
    assert block.nin_shortcut is None
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        h = F.conv2d(F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)), block.conv1.weight,
                     padding=1)
        h = F.conv2d(F.silu(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)), block.conv2.weight,
                     padding=1)
        torch.testing.assert_close(block(x), h + x)


def test_pixel_decoder_levels_and_upsampling() -> None:
    dec = PixelDecoder(32, (1, 2), num_res_blocks=1, z_channels=8).eval()
    keys = dec.state_dict().keys()
    # level 1 (lowest resolution) runs first and upsamples; level 0 does not
    assert "up.1.upsample_conv.weight" in keys and "up.0.upsample_conv.weight" not in keys
    assert "up.0.block.0.nin_shortcut.weight" in keys  # 64 -> 32 channels
    with torch.no_grad():
        assert dec(torch.randn(1, 8, 4, 4)).shape == (1, 3, 8, 8)


def test_quantizer_is_the_reference_argmin() -> None:
    torch.manual_seed(0)
    q = ReferenceQuantizer(16, 4, l2_norm=True)
    z = torch.randn(10, 4)
    e = F.normalize(q.embedding.weight, dim=-1)
    brute = torch.cdist(F.normalize(z, dim=-1), e).argmin(dim=1)
    assert torch.equal(q.nearest(z), brute)
    # looked-up codes are normalised again (the reference's get_codebook_entry)
    torch.testing.assert_close(q.lookup(brute).norm(dim=-1), torch.ones(10))
    # ties go to the lower index, as torch.argmin in the reference
    with torch.no_grad():
        q.embedding.weight[5] = q.embedding.weight[3]
    assert int(q.nearest(q.embedding.weight[3:4].clone())[0]) == 3


def test_quantizer_without_l2_uses_raw_codes() -> None:
    torch.manual_seed(0)
    q = ReferenceQuantizer(16, 4, l2_norm=False)
    z = torch.randn(10, 4) * 0.1
    assert torch.equal(q.nearest(z), torch.cdist(z, q.embedding.weight).argmin(dim=1))
    assert torch.equal(q.lookup(torch.tensor([2])), q.embedding.weight[2:3])


def test_reference_config_errors_are_readable() -> None:
    with pytest.raises(ValueError, match="pixel_head"):
        build_model(get_preset("titok-l-32", pixel_head="rgb"))
    with pytest.raises(ValueError, match="pixel_channel_mult"):
        with torch.device("meta"):
            build_model(get_preset("titok-l-32", pixel_channel_mult=(1, 2)))
