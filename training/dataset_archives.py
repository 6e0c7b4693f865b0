"""The CIFAR-10 and MNIST download archives as dataset_tool.py sources (as NVIDIA's dataset_tool).

- ``cifar-10-python.tar.gz``: the five ``cifar-10-batches-py/data_batch_N`` pickles (50k 32x32 RGB
  images, labels 0-9). They are Python pickles, so they are read with an unpickler that builds only
  dicts, lists, strings, bytes and numpy arrays: no other class or callable can be named by the file.
- ``train-images-idx3-ubyte.gz`` with ``train-labels-idx1-ubyte.gz`` beside it: 60k 28x28 gray
  images, zero-padded to 32x32 as NVIDIA does, labels 0-9.

Each reader returns ``(num_images, items)`` with items ``dict(name, img=uint8 HWC/HW, label=int)``.
"""
import gzip
import io
import os
import pickle
import tarfile

import numpy as np

from dnnlib.util import UserError

CIFAR10_NAME = 'cifar-10-python.tar.gz'
MNIST_NAME = 'train-images-idx3-ubyte.gz'

# What a pickled numpy array needs (numpy 1.x and 2.x spellings); nothing else may be named.
_NUMPY_GLOBALS = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                  ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 batch')


def is_cifar10(path):
    return os.path.basename(path) == CIFAR10_NAME


def is_mnist(path):
    return os.path.basename(path) == MNIST_NAME


def _limit(count, max_images):
    return count if max_images is None else min(count, max_images)


def read_cifar10(path, max_images=None):
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:gz') as tar:
            for batch in range(1, 6):
                member = f'cifar-10-batches-py/data_batch_{batch}'
                try:
                    raw = tar.extractfile(tar.getmember(member)).read()
                except KeyError:
                    raise UserError(f'--source {path}: no {member} (not the CIFAR-10 python archive)') from None
                data = _ArrayUnpickler(io.BytesIO(raw), encoding='latin1').load()
                if not isinstance(data, dict) or 'data' not in data or 'labels' not in data:
                    raise UserError(f'--source {path}: {member} has no data/labels')
                images.append(np.asarray(data['data'], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(data['labels'], dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise UserError(f'--source {path}: cannot read the CIFAR-10 archive ({type(e).__name__}: {e})') from None
    images = np.concatenate(images).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    labels = np.concatenate(labels)
    if len(images) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() <= 9):
        raise UserError(f'--source {path}: {len(images)} images but {len(labels)} labels in 0..9')
    num = _limit(len(images), max_images)
    return num, (dict(name=f'cifar{i:05d}', img=images[i], label=int(labels[i])) for i in range(num))


def read_mnist(path, max_images=None):
    labels_path = path[:-len(MNIST_NAME)] + 'train-labels-idx1-ubyte.gz'
    if not os.path.isfile(labels_path):
        raise UserError(f'--source {path}: needs train-labels-idx1-ubyte.gz in the same folder')
    try:
        with gzip.open(path, 'rb') as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16)
        with gzip.open(labels_path, 'rb') as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f'--source {path}: cannot read the MNIST files ({type(e).__name__}: {e})') from None
    if images.size % (28 * 28) or images.size // (28 * 28) != labels.size or (labels.size and labels.max() > 9):
        raise UserError(f'--source {path}: {images.size // (28 * 28)} images of 28x28 but {labels.size} labels in 0..9')
    images = np.pad(images.reshape(-1, 28, 28), [(0, 0), (2, 2), (2, 2)], 'constant', constant_values=0)  # 32x32 as NVIDIA
    num = _limit(len(images), max_images)
    return num, (dict(name=f'mnist{i:05d}', img=images[i], label=int(labels[i])) for i in range(num))
