"""Content masks: where in a generated image the content of interest is.

``uniform``: every pixel (LSUN and other non-face data). ``face``: a BiSeNet face parser labels
the image and the content is every label except background (0) and cloth (16), so skin, facial
parts, hair, hat, neck and earrings count (CAGAN's rule, also used by the SVS distillation).

The parse runs at ``parse_size`` (512, the parser's training size): image in [-1, 1] -> [0, 1]
(clamped) -> bilinear resize -> ImageNet normalisation -> argmax of the main head. The label mask
comes back to the image size in one of two ways:
- ``resize='nearest'`` (pruning, CAGAN's scorer): nearest neighbour at pixel centres, as PIL does
  for a mode "1" image;
- ``resize='bilinear'`` (distillation): bilinear resize of the float mask, then ``> 0.5``.
"""
import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import misc

MODES = ('uniform', 'face')
RESIZE_MODES = ('nearest', 'bilinear')
BACKGROUND_LABEL = 0
CLOTH_LABEL = 16

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------


def content_labels(labels):
    """Boolean content mask from a CelebAMask-HQ label map: not background and not cloth."""
    return (labels != BACKGROUND_LABEL) & (labels != CLOTH_LABEL)


def parser_input(img, parse_size=512, quantize=False):
    """Image in [-1, 1], NCHW RGB -> the parser's input: [0, 1], resized, ImageNet-normalised.
    ``quantize=True`` rounds to 8-bit levels first, as CAGAN's PIL conversion does."""
    x = ((img.float() + 1) / 2).clamp(0, 1)
    if quantize:
        x = (x * 255 + 0.5).floor() / 255
    if tuple(x.shape[2:]) != (parse_size, parse_size):
        x = F.interpolate(x, size=(parse_size, parse_size), mode='bilinear', align_corners=False)
    mean = torch.tensor(_IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def face_labels(parser, img, parse_size=512, quantize=False):
    """Argmax labels [N, parse_size, parse_size] (int64) of the parser's main head."""
    with torch.no_grad(), torch.autocast(device_type=img.device.type, enabled=False):
        logits = parser(parser_input(img, parse_size=parse_size, quantize=quantize))
        return logits.argmax(dim=1)


def content_mask(parser, img, mode='uniform', parse_size=512, resize='nearest', quantize=False):
    """Float mask [N, 1, H, W] of 0/1 on ``img``'s device, computed without gradient.

    ``img``: generated images in [-1, 1], NCHW RGB. ``parser``: a BiSeNet from
    ``pruning.face_parsing.load_face_parser`` (only used for ``mode='face'``). ``resize``:
    'nearest' (pruning) or 'bilinear' + threshold 0.5 (distillation), see the module docstring.
    """
    if mode not in MODES:
        raise dnnlib.util.UserError(f'--mask: unknown content mask "{mode}", expected one of {", ".join(MODES)}')
    if resize not in RESIZE_MODES:
        raise dnnlib.util.UserError(f'content mask resize: unknown mode "{resize}", expected one of {", ".join(RESIZE_MODES)}')
    assert img.ndim == 4, img.shape
    n, _, h, w = img.shape
    if mode == 'uniform':
        return torch.ones([n, 1, h, w], dtype=torch.float32, device=img.device)
    if parser is None:
        raise dnnlib.util.UserError('--mask face: needs a BiSeNet face-parser checkpoint (--face-parser PATH_OR_URL)')

    with torch.no_grad(), misc.frozen_network_scope():
        mask = content_labels(face_labels(parser, img, parse_size=parse_size, quantize=quantize))
        mask = mask[:, None].float()
        if tuple(mask.shape[2:]) != (h, w):
            if resize == 'nearest':
                mask = F.interpolate(mask, size=(h, w), mode='nearest-exact')
            else:
                mask = (F.interpolate(mask, size=(h, w), mode='bilinear', align_corners=False) > 0.5).float()
    return mask

# ---------------------------------------------------------------------------------------------
