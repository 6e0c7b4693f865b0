"""BiSeNet face parser (zllrunning/face-parsing.PyTorch) with a torchvision-free ResNet-18.

19 CelebAMask-HQ classes: 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g,
7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l, 16 cloth,
17 hair, 18 hat. Trained on 512x512 inputs, ImageNet-normalised.

Module and parameter names equal those of the public checkpoint ``79999_iter.pth`` (a plain
state_dict: ``cp.resnet.conv1.weight``, ``cp.resnet.layer1.0.conv1.weight``, ``cp.arm16.*``,
``cp.arm32.*``, ``cp.conv_head32.*``, ``cp.conv_head16.*``, ``cp.conv_avg.*``, ``ffm.*``,
``conv_out.*``, ``conv_out16.*``, ``conv_out32.*``, BatchNorm running statistics included), so it
loads strictly. The spatial path of BiSeNet is not built (that repository replaces it by the
ResNet's 1/8 feature). Nothing is downloaded implicitly: the original constructor fetches
torchvision's ResNet-18 weights even though the checkpoint overwrites them.

The checkpoint is distributed on Google Drive (id ``154JgKpzCPW82qINcVieuPH3fZ2e0P812``, linked
from the face-parsing.PyTorch README); pass its local path or a URL to ``load_face_parser``.
"""
import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import vgg16

NUM_CLASSES = 19
LABEL_NAMES = ('background', 'skin', 'l_brow', 'r_brow', 'l_eye', 'r_eye', 'eye_g', 'l_ear', 'r_ear', 'ear_r',
               'nose', 'mouth', 'u_lip', 'l_lip', 'neck', 'neck_l', 'cloth', 'hair', 'hat')

# ---------------------------------------------------------------------------------------------
# ResNet-18 trunk (returns the 1/8, 1/16 and 1/32 features).


class BasicBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(out_channels)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(out_channels)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                torch.nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


def _stage(in_channels, out_channels, stride):
    return torch.nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1))


class ResNet18(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32

# ---------------------------------------------------------------------------------------------
# BiSeNet parts.


class ConvBNReLU(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = torch.nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class AttentionRefinementModule(torch.nn.Module):
    """3x3 conv, then a channel gate from global average pooling (1x1 conv, BN, sigmoid)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3, 1, 1)
        self.conv_atten = torch.nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = torch.nn.BatchNorm2d(out_channels)

    def forward(self, x):
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * gate


class ContextPath(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        # A 1x1 map upsampled with 'nearest' is a broadcast.
        feat32_sum = self.arm32(feat32) + global_context
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[2:], mode='nearest'))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[2:], mode='nearest'))
        return feat8, feat16_up, feat32_up  # 1/8, 1/8, 1/16


class FeatureFusionModule(torch.nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1, 1, 0)
        self.conv1 = torch.nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = torch.nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat * gate + feat


class BiSeNetOutput(torch.nn.Module):
    def __init__(self, in_channels, mid_channels, num_classes):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3, 1, 1)
        self.conv_out = torch.nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(torch.nn.Module):
    """Input: ImageNet-normalised RGB, NCHW (any size divisible by 32; trained at 512).
    Output: class logits [N, num_classes, H, W] of the main head, or with ``aux=True`` the tuple
    (main, aux16, aux32) like the original forward."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.num_classes = num_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, num_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, num_classes)

    def forward(self, x, aux=False):
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        fused = self.ffm(feat8, feat_cp8)  # the ResNet 1/8 feature stands in for the spatial path
        heads = [self.conv_out(fused)]
        if aux:
            heads += [self.conv_out16(feat_cp8), self.conv_out32(feat_cp16)]
        heads = [F.interpolate(h, size=size, mode='bilinear', align_corners=True) for h in heads]
        return tuple(heads) if aux else heads[0]

# ---------------------------------------------------------------------------------------------


def load_face_parser(path_or_url, device='cpu', cache_dir=None):
    """A frozen BiSeNet in eval mode on ``device`` from a ``79999_iter.pth``-style state_dict.

    Loading is strict: missing, unexpected or mis-shaped entries raise ``UserError`` naming them
    (a missing ``num_batches_tracked`` is allowed; it does not affect evaluation). A ``module.``
    prefix from a DataParallel save is removed.
    """
    if path_or_url is None or str(path_or_url) == '':
        raise dnnlib.util.UserError('--face-parser: the face mask needs a BiSeNet checkpoint (79999_iter.pth), '
                                    'give its path or URL')
    state = vgg16.load_torch_state_dict(path_or_url, cache_dir=cache_dir, what='BiSeNet face-parser weights')
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    net = BiSeNet()
    vgg16.load_state_dict_exactly(net, state, path_or_url, ignore_missing=('num_batches_tracked',))
    net.requires_grad_(False).eval()
    return net.to(device)


_parser_cache = dict()


def get_face_parser(path_or_url, device='cpu', cache_dir=None):
    """``load_face_parser`` once per process for each (checkpoint, device)."""
    key = (str(path_or_url), str(torch.device(device)), str(cache_dir))
    if key not in _parser_cache:
        _parser_cache[key] = load_face_parser(path_or_url, device=device, cache_dir=cache_dir)
    return _parser_cache[key]

# ---------------------------------------------------------------------------------------------
