import torch

from titok.model.quantizer import VectorQuantizer, codebook_stats


def test_lookup_gives_back_exactly_the_quantized_vectors_in_eval():
    torch.manual_seed(0)
    for l2 in (True, False):
        vq = VectorQuantizer(64, 8, l2_norm=l2).eval()
        z = torch.randn(3, 5, 8)
        q, idx, _ = vq(z)
        assert idx.shape == (3, 5) and idx.dtype == torch.long
        assert torch.equal(vq.lookup(idx), q)


def test_nearest_matches_brute_force_distance():
    torch.manual_seed(1)
    vq = VectorQuantizer(50, 6, l2_norm=False)
    z = torch.randn(40, 6)
    brute = torch.cdist(z, vq.embedding.weight).argmin(-1)
    assert torch.equal(vq.nearest(z), brute)


def test_gradients_reach_the_encoder_side_and_the_codebook():
    torch.manual_seed(2)
    vq = VectorQuantizer(32, 4).train()
    z = torch.randn(2, 3, 4, requires_grad=True)
    q, _, loss = vq(z)
    (q.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().sum() > 0


def test_quantizer_runs_in_fp32_under_low_precision_inputs():
    vq = VectorQuantizer(16, 4).eval()
    q, _, loss = vq(torch.randn(1, 2, 4).to(torch.bfloat16))
    assert q.dtype == torch.float32 and loss.dtype == torch.float32


def test_a_dead_code_is_reseeded_from_encoder_outputs():
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 4, l2_norm=False, dead_code_steps=5).train()
    # Steer every vector to code 0 so the other codes go unused.
    vq.embedding.weight.data[:] = 100.0
    vq.embedding.weight.data[0] = 0.0
    vq.steps_unused.zero_()
    z = 0.01 * torch.randn(2, 3, 4)
    for _ in range(5):
        vq(z)
    assert vq.steps_unused[0] == 0 and (vq.steps_unused[1:] == 5).all()
    before = vq.embedding.weight.detach().clone()
    n = vq.reseed_dead_codes(z)
    assert n == 7
    assert torch.equal(vq.embedding.weight[0], before[0])
    # Re-seeded codes now sit near the encoder outputs, far from their old value of 100.
    assert (vq.embedding.weight[1:].abs() < 1).all()
    assert (vq.steps_unused == 0).all()


def test_codebook_stats_usage_and_perplexity():
    s = codebook_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert s["usage"] == 0.5 and abs(s["perplexity"] - 4.0) < 1e-9
    s = codebook_stats(torch.tensor([5, 5, 5]), 8)
    assert s["usage"] == 1 / 8 and abs(s["perplexity"] - 1.0) < 1e-9
