"""BiSeNet face parser: checkpoint layout and strict loading; content masks (uniform, face)."""
import os

import pytest
import torch
import torch.nn.functional as F

import dnnlib
from pruning import content_mask as cm
from pruning import face_parsing

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def random_bisenet(seed=0):
    """A BiSeNet with random weights and random BatchNorm statistics (so that they matter)."""
    torch.manual_seed(seed)
    net = face_parsing.BiSeNet()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith('running_mean'):
                t.normal_(0, 0.1)
            elif name.endswith('running_var'):
                t.uniform_(0.5, 1.5)
            elif name.endswith('bn.weight') or name.endswith('bn1.weight') or name.endswith('bn2.weight'):
                t.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    net = random_bisenet()
    path = tmp_path_factory.mktemp('face_parser') / '79999_iter.pth'
    torch.save(net.state_dict(), path)
    return dnnlib.EasyDict(net=net, path=str(path), state=net.state_dict())


def test_state_dict_layout_of_79999_iter():
    shapes = {k: tuple(v.shape) for k, v in face_parsing.BiSeNet().state_dict().items()}
    expected = {
        'cp.resnet.conv1.weight': (64, 3, 7, 7),
        'cp.resnet.bn1.running_var': (64,),
        'cp.resnet.layer1.0.conv1.weight': (64, 64, 3, 3),
        'cp.resnet.layer2.0.downsample.0.weight': (128, 64, 1, 1),
        'cp.resnet.layer4.1.bn2.running_mean': (512,),
        'cp.arm16.conv.conv.weight': (128, 256, 3, 3),
        'cp.arm32.conv.conv.weight': (128, 512, 3, 3),
        'cp.arm32.conv_atten.weight': (128, 128, 1, 1),
        'cp.arm32.bn_atten.running_mean': (128,),
        'cp.conv_head32.conv.weight': (128, 128, 3, 3),
        'cp.conv_head16.bn.bias': (128,),
        'cp.conv_avg.conv.weight': (128, 512, 1, 1),
        'ffm.convblk.conv.weight': (256, 256, 1, 1),
        'ffm.conv1.weight': (64, 256, 1, 1),
        'ffm.conv2.weight': (256, 64, 1, 1),
        'conv_out.conv.conv.weight': (256, 256, 3, 3),
        'conv_out.conv_out.weight': (19, 256, 1, 1),
        'conv_out16.conv.conv.weight': (64, 128, 3, 3),
        'conv_out32.conv_out.weight': (19, 64, 1, 1),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    # No spatial path, no classifier, no layer1 shortcut (same width, stride 1).
    assert not any(k.startswith('sp.') or '.fc.' in k for k in shapes)
    assert not any(k.startswith('cp.resnet.layer1.') and 'downsample' in k for k in shapes)


def test_output_shapes_and_eval_batch_independence(checkpoint):
    net = checkpoint.net
    x = torch.randn([2, 3, 64, 96])
    with torch.no_grad():
        main = net(x)
        heads = net(x, aux=True)
        single = net(x[1:])
    assert main.shape == (2, 19, 64, 96)
    assert len(heads) == 3 and all(h.shape == (2, 19, 64, 96) for h in heads)
    torch.testing.assert_close(heads[0], main)
    torch.testing.assert_close(single, main[1:], rtol=1e-4, atol=1e-5)  # running statistics, not batch ones


def test_load_face_parser_strict(checkpoint, tmp_path):
    x = torch.randn([1, 3, 64, 64])
    with torch.no_grad():
        expected = checkpoint.net(x)
    for source in (checkpoint.path, 'file://' + os.path.abspath(checkpoint.path)):
        net = face_parsing.load_face_parser(source)
        assert not net.training and all(not p.requires_grad for p in net.parameters())
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=0, atol=0)

    # DataParallel prefix and absent num_batches_tracked are accepted.
    state = {'module.' + k: v for k, v in checkpoint.state.items() if not k.endswith('num_batches_tracked')}
    torch.save(state, tmp_path / 'dp.pth')
    with torch.no_grad():
        torch.testing.assert_close(face_parsing.load_face_parser(str(tmp_path / 'dp.pth'))(x), expected, rtol=0, atol=0)

    # get_face_parser builds once per (checkpoint, device).
    assert face_parsing.get_face_parser(checkpoint.path) is face_parsing.get_face_parser(checkpoint.path)


def test_load_face_parser_errors(checkpoint, tmp_path):
    with pytest.raises(dnnlib.util.UserError, match='--face-parser'):
        face_parsing.load_face_parser(None)
    with pytest.raises(dnnlib.util.UserError, match='absent.pth'):
        face_parsing.load_face_parser(str(tmp_path / 'absent.pth'))

    state = dict(checkpoint.state)
    del state['cp.arm16.bn_atten.running_mean']
    torch.save(state, tmp_path / 'missing.pth')
    with pytest.raises(dnnlib.util.UserError, match=r'missing\.pth: missing keys cp\.arm16\.bn_atten\.running_mean'):
        face_parsing.load_face_parser(str(tmp_path / 'missing.pth'))

    state = dict(checkpoint.state, **{'sp.conv1.conv.weight': torch.zeros([64, 3, 7, 7])})
    torch.save(state, tmp_path / 'unexpected.pth')
    with pytest.raises(dnnlib.util.UserError, match=r'unexpected keys sp\.conv1\.conv\.weight'):
        face_parsing.load_face_parser(str(tmp_path / 'unexpected.pth'))

    state = dict(checkpoint.state, **{'conv_out.conv_out.weight': torch.zeros([18, 256, 1, 1])})
    torch.save(state, tmp_path / 'shape.pth')
    with pytest.raises(dnnlib.util.UserError, match=r'wrong shapes conv_out\.conv_out\.weight'):
        face_parsing.load_face_parser(str(tmp_path / 'shape.pth'))

# ---------------------------------------------------------------------------------------------


class LabelMapParser(torch.nn.Module):
    """Stand-in parser: one-hot logits of a fixed label map; records its input and grad mode."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels
        self.calls = []

    def forward(self, x):
        self.calls.append(dnnlib.EasyDict(x=x.clone(), grad_enabled=torch.is_grad_enabled()))
        assert x.shape[0] == self.labels.shape[0] and x.shape[2:] == self.labels.shape[1:]
        return F.one_hot(self.labels, 19).permute(0, 3, 1, 2).float()


def synthetic_labels(n=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 19, [n, size, size], generator=gen)
    labels.view(-1)[:19] = torch.arange(19)  # every class occurs
    return labels


def test_uniform_mask_is_ones():
    img = torch.rand([3, 3, 8, 10]) * 2 - 1
    mask = cm.content_mask(None, img, 'uniform')
    assert mask.shape == (3, 1, 8, 10) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.ones_like(mask))


def test_face_mask_label_rule_exactly():
    labels = synthetic_labels(size=8)
    parser = LabelMapParser(labels)
    img = torch.rand([2, 3, 8, 8]) * 2 - 1
    mask = cm.content_mask(parser, img, 'face', parse_size=8)
    expected = torch.ones_like(labels, dtype=torch.bool)
    for background_or_cloth in (0, 16):
        expected &= labels != background_or_cloth
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.float32
    assert torch.equal(mask[:, 0], expected.float())
    # Every other label (hair 17, hat 18, neck 14, earring 9, ...) is content.
    for label in range(19):
        assert bool(mask[:, 0][labels == label].eq(0 if label in (0, 16) else 1).all()), label


def test_face_mask_parser_input_resizes_and_no_grad():
    labels = synthetic_labels(size=16, seed=1)
    parser = LabelMapParser(labels)
    img = (torch.rand([2, 3, 8, 8]) * 2.4 - 1.2).requires_grad_(True)  # slightly out of range
    mask = cm.content_mask(parser, img, 'face', parse_size=16, resize='nearest')
    assert not mask.requires_grad
    assert parser.calls[-1].grad_enabled is False
    x01 = ((img.detach() + 1) / 2).clamp(0, 1)
    expected_input = (F.interpolate(x01, size=(16, 16), mode='bilinear', align_corners=False) - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(parser.calls[-1].x, expected_input)

    # 8-bit rounding as CAGAN's PIL path does.
    cm.content_mask(parser, img, 'face', parse_size=16, quantize=True)
    x_q = torch.floor(x01 * 255 + 0.5) / 255
    expected_q = (F.interpolate(x_q, size=(16, 16), mode='bilinear', align_corners=False) - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(parser.calls[-1].x, expected_q)


def test_face_mask_resize_back_variants():
    labels = synthetic_labels(size=16, seed=2)
    parser = LabelMapParser(labels)
    img = torch.zeros([2, 3, 8, 8])
    content = ((labels != 0) & (labels != 16)).float()
    # Pruning: nearest at pixel centres; output pixel i reads parse pixel 2i+1 (16 -> 8).
    nearest = cm.content_mask(parser, img, 'face', parse_size=16, resize='nearest')
    assert torch.equal(nearest[:, 0], content[:, 1::2, 1::2])
    # Distillation: bilinear of the float mask (a 2x2 mean at exactly half size), then > 0.5.
    bilinear = cm.content_mask(parser, img, 'face', parse_size=16, resize='bilinear')
    block_mean = content.view(2, 8, 2, 8, 2).mean(dim=(2, 4))
    assert torch.equal(bilinear[:, 0], (block_mean > 0.5).float())
    assert not torch.equal(nearest, bilinear)  # the two variants really differ on this map


def test_face_mask_with_bisenet(checkpoint):
    parser = face_parsing.load_face_parser(checkpoint.path)
    # Random heads give one class almost everywhere; let a few feature channels pick among
    # background, cloth and content classes so that the mask has both values.
    with torch.no_grad():
        head = parser.conv_out.conv_out.weight
        head.zero_()
        for channel, label in enumerate((0, 16, 1, 17, 9)):
            head[label, channel] = 1
    img = torch.rand([2, 3, 32, 32], generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = cm.content_mask(parser, img, 'face', parse_size=64)
    with torch.no_grad():
        x = (F.interpolate((img + 1) / 2, size=(64, 64), mode='bilinear', align_corners=False) - IMAGENET_MEAN) / IMAGENET_STD
        labels = parser(x).argmax(dim=1)
    content = ((labels != 0) & (labels != 16)).float()
    assert 0 < content.mean() < 1
    assert torch.equal(mask[:, 0], content[:, 1::2, 1::2])


def test_content_mask_bad_input():
    img = torch.zeros([1, 3, 8, 8])
    with pytest.raises(dnnlib.util.UserError, match='--mask'):
        cm.content_mask(None, img, 'church')
    with pytest.raises(dnnlib.util.UserError, match='--face-parser'):
        cm.content_mask(None, img, 'face')
    with pytest.raises(dnnlib.util.UserError, match='resize'):
        cm.content_mask(None, img, 'uniform', resize='bicubic')
