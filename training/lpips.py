"""LPIPS v0.1 with the VGG16 trunk and learned linear heads, without torchvision.

The same function as ``lpips.LPIPS(net='vgg', version='0.1', lpips=True, spatial=False)``
(Zhang et al. 2018, richzhang/PerceptualSimilarity):

1. inputs in [-1, 1] are shifted and scaled per channel (shift [-.030, -.088, -.188],
   scale [.458, .448, .450]);
2. VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision indices 3, 8, 15,
   22, 29), each unit-normalised over channels as ``f / (sqrt(sum_c f^2) + 1e-10)``;
3. squared difference of the two images' normalised features, a 1x1 linear head without bias
   per layer, mean over space, sum over the five layers.

``LPIPS(x0, x1)`` returns a tensor of shape [N] (the ``lpips`` package returns [N, 1, 1, 1];
``.view(-1)`` of that is the same numbers). Weights: torchvision's ImageNet VGG16
(``vgg16-397923af.pth``) and the LPIPS v0.1 heads (``vgg.pth``, keys ``lin{0..4}.model.1.weight``
of shape [1, C, 1, 1]), by path or URL, cached by ``dnnlib.util.open_url``.
"""
import contextlib

import torch

import dnnlib
from torch_utils import misc
from torch_utils import vgg16

VGG16_URL = vgg16.VGG16_URL
LPIPS_VGG_URL = 'https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth'

_TAPS = (3, 8, 15, 22, 29)               # relu1_2 ... relu5_3 in torchvision's vgg16().features
_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# ---------------------------------------------------------------------------------------------


def _unit_normalize(x):
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + _EPS)


class LPIPS(torch.nn.Module):
    """Frozen LPIPS v0.1 (VGG). Differentiable with respect to its inputs only."""

    def __init__(self, vgg_weights=VGG16_URL, lin_weights=LPIPS_VGG_URL, cache_dir=None, force_fp32=True):
        super().__init__()
        self.force_fp32 = force_fp32  # run in float32 even inside an autocast region
        self.register_buffer('shift', torch.tensor(_SHIFT, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('scale', torch.tensor(_SCALE, dtype=torch.float32).view(1, 3, 1, 1))
        self.vgg = vgg16.load_vgg16_features(vgg_weights, cache_dir=cache_dir)
        self.lins = torch.nn.ModuleList([torch.nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS])
        self._load_lins(lin_weights, cache_dir)
        self.requires_grad_(False)
        self.eval()

    def _load_lins(self, lin_weights, cache_dir):
        state = vgg16.load_torch_state_dict(lin_weights, cache_dir=cache_dir, what='LPIPS linear heads')
        # The official file stores "lin{k}.model.1.weight" (index 0 is the dropout); heads saved
        # with use_dropout=False have "model.0" instead.
        heads = {}
        for k, c in enumerate(_CHANNELS):
            names = [f'lin{k}.model.1.weight', f'lin{k}.model.0.weight']
            found = [n for n in names if n in state]
            if not found:
                raise dnnlib.util.UserError(f'{lin_weights}: missing key lin{k}.model.1.weight (LPIPS v0.1 vgg heads)')
            w = state[found[0]]
            if tuple(w.shape) != (1, c, 1, 1):
                raise dnnlib.util.UserError(f'{lin_weights}: {found[0]} has shape {tuple(w.shape)}, expected {(1, c, 1, 1)}')
            heads[f'{k}.weight'] = w
        vgg16.load_state_dict_exactly(self.lins, heads, lin_weights)

    def train(self, mode=True):
        # Always an evaluation network; a parent's .train() must not change that.
        return super().train(False)

    def _precision(self, x):
        """float32 even under autocast (``force_fp32``); TF32 as for every frozen network."""
        stack = contextlib.ExitStack()
        if self.force_fp32:
            stack.enter_context(torch.autocast(device_type=x.device.type, enabled=False))
        stack.enter_context(misc.frozen_network_scope())
        return stack

    def features(self, x, normalize=False):
        """The unit-normalised VGG16 features of one input (a list): what ``distance_to_features``
        compares against. For a fixed target (e.g. a teacher's image) call it under no_grad."""
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        with self._precision(x):
            x = x.to(self.shift.dtype)
            if normalize:
                x = x * 2 - 1
            return [_unit_normalize(f) for f in self.vgg((x - self.shift) / self.scale, taps=_TAPS)]

    def distance_to_features(self, x0, feats1, normalize=False):
        """LPIPS per sample between ``x0`` and the input whose ``features`` are ``feats1``."""
        feats0 = self.features(x0, normalize=normalize)
        with self._precision(x0):
            dist = 0
            for f0, f1, lin in zip(feats0, feats1, self.lins):
                dist = dist + lin((f0 - f1.to(f0.dtype)).square()).mean(dim=(2, 3))
            return dist[:, 0]

    def forward(self, x0, x1, normalize=False):
        """LPIPS distance per sample, shape [N]. Inputs NCHW RGB in [-1, 1] (``normalize=True``:
        in [0, 1]). Both inputs go through VGG16 as one batch."""
        assert x0.ndim == 4 and x0.shape == x1.shape and x0.shape[1] == 3, (x0.shape, x1.shape)
        with self._precision(x0):
            x = torch.cat([x0, x1]).to(self.shift.dtype)  # the network's dtype (float32 unless cast)
            if normalize:
                x = x * 2 - 1
            x = (x - self.shift) / self.scale
            feats = self.vgg(x, taps=_TAPS)
            n = x0.shape[0]
            dist = 0
            for feat, lin in zip(feats, self.lins):
                f0, f1 = _unit_normalize(feat[:n]), _unit_normalize(feat[n:])
                dist = dist + lin((f0 - f1).square()).mean(dim=(2, 3))
            return dist[:, 0]

# ---------------------------------------------------------------------------------------------

_lpips_cache = dict()


def make_lpips(vgg_weights=VGG16_URL, lin_weights=LPIPS_VGG_URL, cache_dir=None, device='cpu', force_fp32=True):
    """The LPIPS network for these weights on ``device``, built once per process and shared."""
    key = (str(vgg_weights), str(lin_weights), str(cache_dir), str(torch.device(device)), bool(force_fp32))
    if key not in _lpips_cache:
        net = LPIPS(vgg_weights=vgg_weights, lin_weights=lin_weights, cache_dir=cache_dir, force_fp32=force_fp32)
        _lpips_cache[key] = net.to(device)
    return _lpips_cache[key]

# ---------------------------------------------------------------------------------------------
