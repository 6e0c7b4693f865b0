"""Training images: a folder or a zip of PNG/JPEG files, with optional labels from ``dataset.json``.

Same interface as NVIDIA's ``training.dataset`` (``ImageFolderDataset(path, resolution, use_labels,
max_size, xflip, random_seed)``; items are ``(uint8 CHW array, float32 label)``), so
``training_set_kwargs`` stored in official pickles construct this class unchanged. Unlike the
original, every image header and the labels are checked when the dataset is constructed, so a bad
dataset stops a run with one clear line before any training starts.
"""
import json
import os
import zipfile

import numpy as np
import PIL.Image

import dnnlib

# Extensions read as images. Other files (dataset.json, README, ...) are ignored.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')

# PIL mode -> (mode the pixels are converted to, channel count).
_MODE_TO_CHANNELS = {
    '1': ('L', 1), 'L': ('L', 1), 'LA': ('LA', 2), 'P': ('RGB', 3), 'PA': ('RGBA', 4),
    'RGB': ('RGB', 3), 'RGBA': ('RGBA', 4), 'RGBX': ('RGB', 3), 'CMYK': ('RGB', 3),
    'YCbCr': ('RGB', 3),
}


def is_image_file(fname):
    base = os.path.basename(fname)
    if base.startswith('.') or '__MACOSX' in fname.replace('\\', '/').split('/'):
        return False  # macOS resource forks and hidden files are not images
    return os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS


def image_channels(img, where):
    """Channel count the pixels of a PIL image will have; ``UserError`` for modes we cannot train on."""
    if img.mode not in _MODE_TO_CHANNELS:
        raise dnnlib.util.UserError(f'{where}: unsupported image mode {img.mode} (need 8-bit grayscale, RGB or RGBA)')
    return _MODE_TO_CHANNELS[img.mode][1]


def pil_to_chw(img, where):
    """Decode a PIL image into a uint8 CHW array."""
    target_mode = _MODE_TO_CHANNELS.get(img.mode, (None,))[0]
    if target_mode is None:
        image_channels(img, where)  # raises
    if img.mode != target_mode:
        img = img.convert(target_mode)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array.transpose(2, 0, 1)


def _is_pow2(n):
    return n >= 1 and (n & (n - 1)) == 0

# ---------------------------------------------------------------------------------------------


class Dataset:
    """Index bookkeeping shared by all datasets: subset, x-flip, labels."""

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        # A fixed random subset, in index order, so the same max_size and seed give the same images.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        # X-flip doubles the dataset: the second half are the mirrored copies.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            self._raw_labels = self._load_raw_labels() if self._use_labels else None
            if self._raw_labels is None:
                self._raw_labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert isinstance(self._raw_labels, np.ndarray)
            assert self._raw_labels.shape[0] == self._raw_shape[0]
            assert self._raw_labels.dtype in [np.float32, np.int64]
            if self._raw_labels.dtype == np.int64:
                assert self._raw_labels.ndim == 1
                assert np.all(self._raw_labels >= 0)
        return self._raw_labels

    def close(self):  # to be overridden by subclass
        pass

    def _load_raw_image(self, raw_idx):  # to be overridden by subclass
        raise NotImplementedError

    def _load_raw_labels(self):  # to be overridden by subclass
        raise NotImplementedError

    def __getstate__(self):
        # Labels are re-read in each worker rather than copied through the pickle.
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        image = self._load_raw_image(self._raw_idx[idx])
        assert isinstance(image, np.ndarray)
        assert list(image.shape) == self.image_shape, (image.shape, self.image_shape)
        assert image.dtype == np.uint8
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        return dnnlib.EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=(int(self._xflip[idx]) != 0),
                               raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3  # CHW
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3  # CHW
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(np.max(raw_labels)) + 1]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

# ---------------------------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Images in a folder (searched recursively) or a zip archive, sorted by file name."""

    def __init__(self, path, resolution=None, **super_kwargs):
        self._path = os.fspath(path)
        self._zipfile = None
        self._zipfile_pid = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            self._all_fnames = sorted(
                os.path.relpath(os.path.join(root, fname), start=self._path).replace('\\', '/')
                for root, _dirs, files in os.walk(self._path) for fname in files)
        elif os.path.isfile(self._path):
            if not zipfile.is_zipfile(self._path):
                raise dnnlib.util.UserError(f'{self._path}: not a folder or a .zip archive of images')
            self._type = 'zip'
            self._all_fnames = sorted(name for name in self._get_zipfile().namelist() if not name.endswith('/'))
        else:
            raise dnnlib.util.UserError(f'{self._path}: no such dataset (expected a folder or a .zip of images)')

        self._image_fnames = [fname for fname in self._all_fnames if is_image_file(fname)]
        if len(self._image_fnames) == 0:
            raise dnnlib.util.UserError(f'{self._path}: no images found (expected {", ".join(IMAGE_EXTENSIONS)} files)')

        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        raw_shape = [len(self._image_fnames)] + self._check_image_headers(resolution)
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

        # Decode the first image fully: catches files whose header is fine but whose pixels are not.
        first = self._load_raw_image(0)
        if list(first.shape) != raw_shape[1:]:
            raise dnnlib.util.UserError(f'{self._where(0)}: decodes to shape {list(first.shape)}, header says {raw_shape[1:]}')
        if self._use_labels:
            self._get_raw_labels()  # validate now, not in the middle of training

    # -- file access ------------------------------------------------------------------------

    @staticmethod
    def _file_ext(fname):
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self):
        assert self._type == 'zip'
        # A zip handle shared across fork() shares its file offset: reopen in every process.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def _where(self, raw_idx):
        return f'{self._path}: {self._image_fnames[raw_idx]}'

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zipfile_pid=None)

    # -- validation -------------------------------------------------------------------------

    def _check_image_headers(self, resolution):
        """Read every image header (not the pixels): one shape for all, square, power of two."""
        first_shape = None
        first_fname = None
        for raw_idx, fname in enumerate(self._image_fnames):
            try:
                with self._open_file(fname) as f:
                    with PIL.Image.open(f) as img:
                        width, height = img.size
                        channels = image_channels(img, self._where(raw_idx))
            except dnnlib.util.UserError:
                raise
            except Exception as e:
                raise dnnlib.util.UserError(f'{self._where(raw_idx)}: unreadable image ({type(e).__name__}: {e})') from None
            shape = [channels, height, width]
            if first_shape is None:
                first_shape, first_fname = shape, fname
                if width != height:
                    raise dnnlib.util.UserError(f'{self._where(raw_idx)}: image is {width}x{height}; images must be square (use dataset_tool.py --transform=center-crop)')
                if not _is_pow2(width) or width < 4:
                    raise dnnlib.util.UserError(f'{self._where(raw_idx)}: image is {width}x{height}; the resolution must be a power of two >= 4 (use dataset_tool.py --resolution)')
                if resolution is not None and width != resolution:
                    raise dnnlib.util.UserError(f'{self._path}: images are {width}x{height}, but resolution {resolution} was requested')
            elif shape[1:] != first_shape[1:]:
                raise dnnlib.util.UserError(f'{self._where(raw_idx)}: image is {width}x{height}, but {first_fname} is '
                                            f'{first_shape[2]}x{first_shape[1]}; all images must have the same resolution')
            elif shape[0] != first_shape[0]:
                raise dnnlib.util.UserError(f'{self._where(raw_idx)}: image has {shape[0]} channels, but {first_fname} has '
                                            f'{first_shape[0]}; all images must have the same number of channels')
        return first_shape

    # -- loading ----------------------------------------------------------------------------

    def _load_raw_image(self, raw_idx):
        try:
            with self._open_file(self._image_fnames[raw_idx]) as f:
                with PIL.Image.open(f) as img:
                    return pil_to_chw(img, self._where(raw_idx))
        except dnnlib.util.UserError:
            raise
        except Exception as e:
            raise dnnlib.util.UserError(f'{self._where(raw_idx)}: unreadable image ({type(e).__name__}: {e})') from None

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        where = f'{self._path}: {fname}'
        try:
            with self._open_file(fname) as f:
                meta = json.load(f)
        except Exception as e:
            raise dnnlib.util.UserError(f'{where}: not valid JSON ({e})') from None
        if not isinstance(meta, dict):
            raise dnnlib.util.UserError(f'{where}: expected an object with a "labels" list')
        labels = meta.get('labels')
        if labels is None:
            return None
        if not isinstance(labels, list) or not all(isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) for x in labels):
            raise dnnlib.util.UserError(f'{where}: "labels" must be a list of [file name, label] pairs')
        labels = {name.replace('\\', '/'): label for name, label in labels}
        missing = [fname for fname in self._image_fnames if fname not in labels]
        if missing:
            raise dnnlib.util.UserError(f'{where}: no label for {len(missing)} of {len(self._image_fnames)} images (first: {missing[0]})')
        if len(labels) != len(self._image_fnames):
            extra = sorted(set(labels) - set(self._image_fnames))
            raise dnnlib.util.UserError(f'{where}: {len(labels)} labels for {len(self._image_fnames)} images '
                                        f'(labels name files that are not in the dataset, first: {extra[0]})')
        values = [labels[fname] for fname in self._image_fnames]

        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raw = np.array(values, dtype=np.int64)
            if raw.min() < 0:
                raise dnnlib.util.UserError(f'{where}: class labels must be >= 0, got {int(raw.min())}')
            return raw
        if all(isinstance(v, (list, tuple)) for v in values):
            lengths = sorted({len(v) for v in values})
            if len(lengths) != 1:
                raise dnnlib.util.UserError(f'{where}: label vectors have different lengths {lengths}')
            try:
                raw = np.array(values, dtype=np.float32)
            except (TypeError, ValueError):
                raise dnnlib.util.UserError(f'{where}: label vectors must contain numbers only') from None
            if not np.all(np.isfinite(raw)):
                raise dnnlib.util.UserError(f'{where}: label vectors contain NaN or Inf')
            return raw.reshape(len(values), -1)
        raise dnnlib.util.UserError(f'{where}: labels must all be integer classes or all be lists of numbers')

# ---------------------------------------------------------------------------------------------
