"""The ResNet decoder / encoder of the natural-image datasets (original: generative_models/resnet_gen.py,
networks/resnet.py)."""

import pytest
import torch
import torch.nn.functional as F

from daps.nets.resnet import ResNetDecoder, ResNetEncoder, ResNetValueNet, SlicedBatchNorm2d


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "num_tokens, vocab, size, expected",
    [(64, 512, 32, 257_958), (1024, 1024, 256, 330_198)],  # CIFAR-10, ImageNet-256 (the original's counts)
)
def test_decoder_parameter_counts_match_the_original(num_tokens, vocab, size, expected):
    decoder = ResNetDecoder(num_tokens, 128, (3, size, size), out_channels=6, vocab_size=vocab)
    assert num_params(decoder) == expected


def test_decoder_shapes_and_upsampling_layout():
    decoder = ResNetDecoder(64, 16, (3, 32, 32), out_channels=6, width=8, vocab_size=10)
    assert [up.out_channels for up in decoder.ups] == [6, 6]  # max(8 // 2, 6) = 6 (BN, ReLU) -> 6
    codes = torch.randint(10, (5, 64))
    assert decoder(codes).shape == (5, 6, 32, 32)
    assert decoder(codes.expand(3, 5, 64)).shape == (3, 5, 6, 32, 32)
    onehot = F.one_hot(codes, 10).float().requires_grad_()
    decoder(onehot).sum().backward()
    assert onehot.grad is not None and onehot.grad.abs().sum() > 0


def test_tokens_are_laid_out_row_major_on_the_patch_grid():
    """Token t sits at grid cell (t // cols, t % cols), as the encoder cut the image (original:
    data/utils/image_patcher.py)."""
    decoder = ResNetDecoder(8, 4, (3, 8, 16), out_channels=6, width=4, vocab_size=8)
    assert (decoder.rows, decoder.cols) == (2, 4)  # T=8 -> 2 x 4 grid
    seen = {}
    decoder.stem.register_forward_pre_hook(lambda module, args: seen.update(grid=args[0]))
    codes = torch.arange(8)[None]  # token t has code t
    decoder(codes)
    grid = seen["grid"]  # (1, E, 2, 4)
    for t in range(8):
        assert torch.equal(grid[0, :, t // 4, t % 4], decoder.embed.weight[t])


def test_grid_that_does_not_divide_the_image_is_rejected():
    with pytest.raises(ValueError, match="power-of-two"):
        ResNetDecoder(64, 8, (3, 48, 48), out_channels=6)


def _reference_bn(x: torch.Tensor, bn: SlicedBatchNorm2d, slices: int) -> torch.Tensor:
    """Flax BatchNorm applied to each slice by itself (biased variance), via torch's functional batch norm."""
    outs = []
    for part in x.chunk(slices):
        outs.append(F.batch_norm(part, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
    return torch.cat(outs)


def test_sliced_batchnorm_normalizes_each_slice_alone_and_averages_running_stats():
    torch.manual_seed(0)
    bn = SlicedBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    x = torch.randn(4 * 6, 3, 5, 5) * torch.arange(1, 5).repeat_interleave(6).view(-1, 1, 1, 1)  # slices differ
    y = bn(x, num_slices=4)
    assert torch.allclose(y, _reference_bn(x, bn, 4), atol=1e-5)
    slices = x.view(4, 6, 3, 5, 5)
    mean = slices.mean(dim=(1, 3, 4)).mean(0)
    var = slices.var(dim=(1, 3, 4), correction=0).mean(0)
    assert torch.allclose(bn.running_mean, 0.01 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.99 + 0.01 * var, atol=1e-6)
    bn.eval()
    expected = (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(bn(x), expected, atol=1e-5)


def test_decoder_with_a_sample_axis_equals_decoding_each_sample_alone():
    """(K, B, T) codes give what K separate calls on (B, T) give: BatchNorm statistics stay per slice."""
    torch.manual_seed(0)
    decoder = ResNetDecoder(16, 8, (3, 16, 16), out_channels=6, width=8, vocab_size=20)
    codes = torch.randint(20, (3, 4, 16))
    together = decoder(codes)
    alone = torch.stack([decoder(c) for c in codes])
    assert torch.allclose(together, alone, atol=1e-5)


def test_encoder_and_value_net_shapes():
    encoder = ResNetEncoder((3, 32, 32), grid=4)
    assert [d.out_channels for d in encoder.downs] == [8, 16, 32]  # CIFAR value net, as the original's
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 64, 4, 4)
    value = ResNetValueNet((3, 32, 32))
    assert value(torch.randn(2, 3, 32, 32)).shape == (2,)
    assert value.scale == 3072
