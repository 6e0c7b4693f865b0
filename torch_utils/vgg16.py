"""VGG16 convolutional trunk without torchvision.

``VGG16Features.features`` is an ``nn.Sequential`` with torchvision's exact module indices
(conv at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; ReLU after each; max-pool at 4, 9, 16,
23, 30), so the ``features.N.weight`` / ``features.N.bias`` entries of torchvision's ImageNet
checkpoint ``vgg16-397923af.pth`` load as they are. The classifier is not built: LPIPS and the
GAN-Slimming perceptual loss only read the convolutional features.
"""
import torch

import dnnlib

VGG16_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'

# Output channels per conv, 'M' for a 2x2 max-pool (VGG configuration "D").
_VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')

# Index in `features` of the ReLU that ends each stage, by the usual layer names.
RELU_INDEX = dict(relu1_2=3, relu2_2=8, relu3_3=15, relu4_3=22, relu5_3=29)

# ---------------------------------------------------------------------------------------------


class VGG16Features(torch.nn.Module):
    """The 31 modules of torchvision's ``vgg16().features``, with tap points."""

    def __init__(self):
        super().__init__()
        layers = []
        in_channels = 3
        for item in _VGG16_CFG:
            if item == 'M':
                layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(torch.nn.Conv2d(in_channels, item, kernel_size=3, padding=1))
                layers.append(torch.nn.ReLU(inplace=False)) # tapped outputs must stay intact
                in_channels = item
        self.features = torch.nn.Sequential(*layers)

    def forward(self, x, taps=None):
        """Run the trunk. ``taps=None``: the output of the last module. Otherwise a list of the
        outputs of the modules at the given indices (in the order given); the trunk stops after
        the deepest one."""
        if taps is None:
            return self.features(x)
        taps = [int(t) for t in taps]
        assert all(0 <= t < len(self.features) for t in taps)
        wanted = set(taps)
        outputs = {}
        for idx in range(max(taps) + 1):
            x = self.features[idx](x)
            if idx in wanted:
                outputs[idx] = x
        return [outputs[t] for t in taps]

# ---------------------------------------------------------------------------------------------


def load_torch_state_dict(path_or_url, cache_dir=None, what='weights'):
    """Read a ``torch.save``d dict of tensors (weights only, never code) from a path or URL."""
    with dnnlib.util.open_url(path_or_url, cache_dir=cache_dir) as f:
        try:
            data = torch.load(f, map_location='cpu', weights_only=True)
        except Exception as e:
            raise dnnlib.util.UserError(f'{path_or_url}: cannot read {what} ({type(e).__name__}: {e})') from None
    if isinstance(data, dict) and 'state_dict' in data and isinstance(data['state_dict'], dict):
        data = data['state_dict']
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise dnnlib.util.UserError(f'{path_or_url}: {what} must be a dict of tensors')
    return data


def load_state_dict_exactly(module, state, source, ignore_missing=()):
    """Copy ``state`` into ``module``, requiring the same names and shapes; a mismatch is a
    ``UserError`` naming the file and the offending entries. Missing names whose last part is in
    ``ignore_missing`` are allowed (e.g. BatchNorm's ``num_batches_tracked``)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k.rsplit('.', 1)[-1] not in ignore_missing]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f'missing keys {_short_list(missing)}')
    if unexpected:
        problems.append(f'unexpected keys {_short_list(unexpected)}')
    bad_shapes = [f'{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}' for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad_shapes:
        problems.append(f'wrong shapes {_short_list(bad_shapes)}')
    if problems:
        raise dnnlib.util.UserError(f'{source}: ' + '; '.join(problems))
    with torch.no_grad():
        for k, v in own.items():
            if k in state:
                v.copy_(state[k].to(v.dtype))


def _short_list(items, limit=6):
    items = list(items)
    text = ', '.join(items[:limit])
    return text + (f' and {len(items) - limit} more' if len(items) > limit else '')


def load_vgg16_features(path_or_url=VGG16_URL, cache_dir=None, device='cpu'):
    """A frozen (eval, requires_grad False) ``VGG16Features`` with torchvision-format weights.

    Entries outside ``features.`` (the classifier) are ignored; every ``features.`` entry must be
    present with the right shape.
    """
    state = load_torch_state_dict(path_or_url, cache_dir=cache_dir, what='VGG16 weights')
    state = {k: v for k, v in state.items() if k.startswith('features.')}
    net = VGG16Features()
    load_state_dict_exactly(net, state, path_or_url)
    net.requires_grad_(False).eval()
    return net.to(device)

# ---------------------------------------------------------------------------------------------
