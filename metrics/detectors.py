"""Feature detectors: NVIDIA's TorchScript ports of Inception-v3 (FID) and VGG16 (P&R).

Both files are the ones stylegan2-ada-pytorch loads with ``torch.jit.load``. They take uint8 NCHW
RGB images of any size (they resize internally) and are called as
``detector(images, return_features=True)`` -> float32 [N, 2048] (Inception pool3) or [N, 4096]
(VGG16 fc2).

A detector is given by name (``inception`` / ``vgg16``), URL, ``file://`` URL or local path. URLs
are downloaded once through ``dnnlib.util.open_url`` (md5-named cache). For offline machines put
the official files in a folder and pass it as ``detector_dir`` (``--detector-dir``): the file of
the URL's base name is taken from there and nothing is downloaded.
"""
import os
import urllib.parse

import torch

import dnnlib

INCEPTION_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'

# name -> (url, call kwargs for features, feature dimension)
DETECTORS = {
    'inception': dnnlib.EasyDict(url=INCEPTION_URL, kwargs=dict(return_features=True), dim=2048),
    'vgg16': dnnlib.EasyDict(url=VGG16_URL, kwargs=dict(return_features=True), dim=4096),
}

_loaded = dict()  # (url, detector_dir, device) -> module


def detector_url(name_or_url):
    """The URL / path a detector name stands for (other strings are returned unchanged)."""
    if name_or_url in DETECTORS:
        return DETECTORS[name_or_url].url
    return os.fspath(name_or_url)


def detector_file_name(name_or_url):
    """The official file name of a detector (what ``--detector-dir`` must hold)."""
    url = detector_url(name_or_url)
    return os.path.basename(urllib.parse.urlparse(url).path) if '://' in url else os.path.basename(url)


def resolve_detector_file(name_or_url, detector_dir=None, verbose=False):
    """Local file name of a detector, downloading it into the cache if needed.

    With ``detector_dir`` the file must be there (offline clusters); otherwise a missing file that
    cannot be downloaded raises a one-line ``UserError`` that says where to put it.
    """
    url = detector_url(name_or_url)
    if detector_dir is not None:
        if not os.path.isdir(detector_dir):
            raise dnnlib.util.UserError(f'--detector-dir {detector_dir}: no such folder')
        path = os.path.join(detector_dir, detector_file_name(url))
        if not os.path.isfile(path):
            raise dnnlib.util.UserError(f'--detector-dir {detector_dir}: no file {detector_file_name(url)} '
                                        f'(download it from {url})')
        return path
    try:
        return dnnlib.util.open_url(url, return_filename=True, verbose=verbose)
    except dnnlib.util.UserError as e:
        if dnnlib.util.is_url(url):
            raise dnnlib.util.UserError(f'{e}; on an offline machine download {detector_file_name(url)} '
                                        f'elsewhere and pass its folder with --detector-dir') from None
        raise


def load_detector(name_or_url, device='cpu', detector_dir=None, verbose=False):
    """The TorchScript detector module on ``device`` (loaded once per process and device)."""
    device = torch.device(device)
    key = (detector_url(name_or_url), detector_dir, str(device))
    if key not in _loaded:
        path = resolve_detector_file(name_or_url, detector_dir=detector_dir, verbose=verbose)
        try:
            module = torch.jit.load(path, map_location=device)
        except Exception as e:  # a truncated download or a file of another kind
            raise dnnlib.util.UserError(f'{path}: not a TorchScript detector ({type(e).__name__}: {str(e).splitlines()[0]})') from None
        _loaded[key] = module.eval()
    return _loaded[key]


def detector_kwargs(name_or_url):
    """Call kwargs that make a detector return features (the official ones for known names)."""
    url = detector_url(name_or_url)
    for spec in DETECTORS.values():
        if url == spec.url or detector_file_name(url) == detector_file_name(spec.url):
            return dict(spec.kwargs)
    return dict(return_features=True)


def run_detector(detector, images_uint8, **kwargs):
    """Features of a uint8 NCHW batch (gray images repeated to RGB) as float32 on the images' device."""
    if images_uint8.dtype != torch.uint8:
        raise dnnlib.util.UserError(f'detector input: expected uint8 images, got {images_uint8.dtype}')
    if images_uint8.shape[1] == 1:
        images_uint8 = images_uint8.repeat([1, 3, 1, 1])
    with torch.no_grad():
        features = detector(images_uint8, **kwargs)
    return features.to(torch.float32)
