"""Datasets: ImageFolderDataset (folder/zip, labels, x-flip, subsets, bad input), dataset_tool.py,
and the built-in sample dataset."""
import hashlib
import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from dnnlib.util import UserError
from training import sample_data
from training.dataset import ImageFolderDataset


def random_images(n, h=8, w=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, c) if c > 1 else (h, w), dtype=np.uint8) for _ in range(n)]


def write_folder(folder, images, names=None, labels=None):
    os.makedirs(folder, exist_ok=True)
    names = names or [f'img{i:03d}.png' for i in range(len(images))]
    for name, img in zip(names, images):
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        PIL.Image.fromarray(img).save(os.path.join(folder, name))
    if labels is not None:
        with open(os.path.join(folder, 'dataset.json'), 'w') as f:
            json.dump({'labels': [[n, l] for n, l in zip(names, labels)]}, f)
    return names


def write_zip(path, images, names=None, labels=None):
    names = names or [f'img{i:03d}.png' for i in range(len(images))]
    with zipfile.ZipFile(path, 'w') as zf:
        for name, img in zip(names, images):
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format='png')
            zf.writestr(name, buf.getvalue())
        if labels is not None:
            zf.writestr('dataset.json', json.dumps({'labels': [[n, l] for n, l in zip(names, labels)]}))
    return names


def to_chw(img):
    return img.transpose(2, 0, 1) if img.ndim == 3 else img[np.newaxis]

# ---------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize('kind', ['folder', 'zip'])
def test_round_trip(tmp_path, kind):
    images = random_images(5)
    path = tmp_path / ('data.zip' if kind == 'zip' else 'data')
    (write_zip if kind == 'zip' else write_folder)(str(path), images)
    ds = ImageFolderDataset(str(path))
    assert len(ds) == 5
    assert ds.name == 'data'
    assert ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    assert not ds.has_labels and ds.label_dim == 0
    for i, img in enumerate(images):
        x, label = ds[i]
        assert x.dtype == np.uint8 and np.array_equal(x, to_chw(img))
        assert label.dtype == np.float32 and label.shape == (0,)
    ds.close()


def test_nested_folder_and_grayscale(tmp_path):
    images = random_images(3, c=1)
    write_folder(str(tmp_path / 'd'), images, names=['b/x.png', 'a/y.png', 'a/z.jpg.png'])
    (tmp_path / 'd' / 'notes.txt').write_text('not an image')
    ds = ImageFolderDataset(str(tmp_path / 'd'))
    assert ds.image_shape == [1, 8, 8]
    # Sorted by relative path: a/y.png, a/z.jpg.png, b/x.png.
    assert np.array_equal(ds[0][0], to_chw(images[1]))
    assert np.array_equal(ds[2][0], to_chw(images[0]))


def test_class_labels_are_onehot(tmp_path):
    images = random_images(4)
    write_zip(str(tmp_path / 'd.zip'), images, labels=[2, 0, 1, 2])
    ds = ImageFolderDataset(str(tmp_path / 'd.zip'), use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_dim == 3
    assert np.array_equal(ds[0][1], np.array([0, 0, 1], dtype=np.float32))
    assert np.array_equal(ds.get_label(1), np.array([1, 0, 0], dtype=np.float32))
    # Without use_labels the labels are ignored.
    assert ImageFolderDataset(str(tmp_path / 'd.zip')).label_dim == 0


def test_vector_labels(tmp_path):
    images = random_images(3)
    vectors = [[0.5, -1.0], [1.5, 2.0], [0.0, 0.25]]
    write_folder(str(tmp_path / 'd'), images, labels=vectors)
    ds = ImageFolderDataset(str(tmp_path / 'd'), use_labels=True)
    assert not ds.has_onehot_labels and ds.label_dim == 2
    assert np.allclose(ds[1][1], vectors[1]) and ds[1][1].dtype == np.float32


def test_xflip_doubles_and_mirrors(tmp_path):
    images = random_images(3)
    write_zip(str(tmp_path / 'd.zip'), images, labels=[0, 1, 2])
    ds = ImageFolderDataset(str(tmp_path / 'd.zip'), xflip=True, use_labels=True)
    assert len(ds) == 6
    for i in range(3):
        assert np.array_equal(ds[i][0], to_chw(images[i]))
        assert np.array_equal(ds[i + 3][0], to_chw(images[i])[:, :, ::-1])
        assert np.array_equal(ds[i + 3][1], ds[i][1])
        assert ds.get_details(i + 3).xflip and not ds.get_details(i).xflip
        assert ds.get_details(i + 3).raw_idx == i


def test_max_size_is_a_seeded_subset(tmp_path):
    images = random_images(10)
    write_folder(str(tmp_path / 'd'), images)
    a = ImageFolderDataset(str(tmp_path / 'd'), max_size=4, random_seed=1)
    b = ImageFolderDataset(str(tmp_path / 'd'), max_size=4, random_seed=1)
    c = ImageFolderDataset(str(tmp_path / 'd'), max_size=4, random_seed=2)
    idx_a = [a.get_details(i).raw_idx for i in range(len(a))]
    assert len(a) == 4 and idx_a == sorted(idx_a)
    assert idx_a == [b.get_details(i).raw_idx for i in range(len(b))]
    assert idx_a != [c.get_details(i).raw_idx for i in range(len(c))]
    for i, raw in enumerate(idx_a):
        assert np.array_equal(a[i][0], to_chw(images[raw]))
    assert len(ImageFolderDataset(str(tmp_path / 'd'), max_size=50)) == 10


def test_pickle_and_worker_processes(tmp_path):
    images = random_images(8)
    write_zip(str(tmp_path / 'd.zip'), images, labels=list(range(8)))
    ds = ImageFolderDataset(str(tmp_path / 'd.zip'), use_labels=True)
    ds[0]  # open the zip in this process before forking
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[3][0], ds[3][0]) and np.array_equal(clone[3][1], ds[3][1])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    got = torch.cat([x for x, _ in loader]).numpy()
    assert np.array_equal(got, np.stack([to_chw(img) for img in images]))
    ds.close()

# ---------------------------------------------------------------------------------------------
# Bad input: one clear line naming the problem.


def expect_error(match, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        ImageFolderDataset(*args, **kwargs)
    assert '\n' not in str(info.value)
    return str(info.value)


def test_error_missing_path(tmp_path):
    msg = expect_error('no such dataset', str(tmp_path / 'nope.zip'))
    assert 'nope.zip' in msg


def test_error_not_a_zip(tmp_path):
    (tmp_path / 'x.zip').write_bytes(b'not a zip')
    expect_error('not a folder or a .zip', str(tmp_path / 'x.zip'))


def test_error_empty_dataset(tmp_path):
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'readme.txt').write_text('hi')
    expect_error('no images found', str(tmp_path / 'd'))


def test_error_unreadable_image(tmp_path):
    write_folder(str(tmp_path / 'd'), random_images(2))
    (tmp_path / 'd' / 'img001.png').write_bytes(b'\x89PNG garbage')
    msg = expect_error('unreadable image', str(tmp_path / 'd'))
    assert 'img001.png' in msg


def test_error_mixed_resolutions(tmp_path):
    write_folder(str(tmp_path / 'd'), random_images(2) + random_images(1, h=16, w=16))
    msg = expect_error('same resolution', str(tmp_path / 'd'))
    assert 'img002.png' in msg and '16x16' in msg


def test_error_non_square(tmp_path):
    write_zip(str(tmp_path / 'd.zip'), random_images(2, h=8, w=16))
    expect_error('must be square', str(tmp_path / 'd.zip'))


def test_error_non_power_of_two(tmp_path):
    write_folder(str(tmp_path / 'd'), random_images(2, h=12, w=12))
    expect_error('power of two', str(tmp_path / 'd'))


def test_error_resolution_mismatch(tmp_path):
    write_folder(str(tmp_path / 'd'), random_images(2))
    msg = expect_error('resolution 16 was requested', str(tmp_path / 'd'), resolution=16)
    assert '8x8' in msg
    assert ImageFolderDataset(str(tmp_path / 'd'), resolution=8).resolution == 8


def test_error_mixed_channels(tmp_path):
    write_folder(str(tmp_path / 'd'), random_images(1) + random_images(1, c=1), names=['a.png', 'b.png'])
    msg = expect_error('channels', str(tmp_path / 'd'))
    assert 'b.png' in msg


def test_error_label_missing_for_image(tmp_path):
    names = write_folder(str(tmp_path / 'd'), random_images(3))
    with open(tmp_path / 'd' / 'dataset.json', 'w') as f:
        json.dump({'labels': [[names[0], 0], [names[2], 1]]}, f)
    msg = expect_error('no label for 1 of 3 images', str(tmp_path / 'd'), use_labels=True)
    assert names[1] in msg
    ImageFolderDataset(str(tmp_path / 'd'))  # fine when labels are not used


def test_error_label_count(tmp_path):
    names = write_folder(str(tmp_path / 'd'), random_images(2))
    with open(tmp_path / 'd' / 'dataset.json', 'w') as f:
        json.dump({'labels': [[names[0], 0], [names[1], 1], ['gone.png', 1]]}, f)
    msg = expect_error('3 labels for 2 images', str(tmp_path / 'd'), use_labels=True)
    assert 'gone.png' in msg


def test_error_label_types(tmp_path):
    names = write_folder(str(tmp_path / 'd'), random_images(2))
    with open(tmp_path / 'd' / 'dataset.json', 'w') as f:
        json.dump({'labels': [[names[0], 0], [names[1], [0.5, 1.0]]]}, f)
    expect_error('all be integer classes', str(tmp_path / 'd'), use_labels=True)

# ---------------------------------------------------------------------------------------------
# dataset_tool.py


def block_mean(img, factor):
    h, w = img.shape[:2]
    blocks = img.reshape(h // factor, factor, w // factor, factor, -1).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def test_tool_box_resize_is_block_mean_and_labels_carry(tmp_path):
    images = random_images(3, h=16, w=16)
    write_folder(str(tmp_path / 'src'), images, labels=[1, 0, 1])
    n = dataset_tool.convert_dataset(str(tmp_path / 'src'), str(tmp_path / 'out.zip'), resolution=(4, 4), verbose=False)
    assert n == 3
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert ds.image_shape == [3, 4, 4]
    for i, img in enumerate(images):
        assert np.array_equal(ds[i][0], to_chw(block_mean(img, 4)))
    assert [int(np.argmax(ds.get_label(i))) for i in range(3)] == [1, 0, 1]


def test_tool_center_crop_then_box(tmp_path):
    images = random_images(2, h=8, w=12)
    write_zip(str(tmp_path / 'src.zip'), images)
    dataset_tool.convert_dataset(str(tmp_path / 'src.zip'), str(tmp_path / 'out'), transform='center-crop',
                                 resolution=(4, 4), verbose=False)
    assert not any(p.name.endswith('.tmp') for p in tmp_path.iterdir())
    ds = ImageFolderDataset(str(tmp_path / 'out'))
    for i, img in enumerate(images):
        assert np.array_equal(ds[i][0], to_chw(block_mean(img[:, 2:10], 2)))


def test_tool_center_crop_wide_letterboxes(tmp_path):
    images = [np.full((8, 16, 3), 200, dtype=np.uint8)]
    write_folder(str(tmp_path / 'src'), images)
    dataset_tool.convert_dataset(str(tmp_path / 'src'), str(tmp_path / 'out.zip'), transform='center-crop-wide',
                                 resolution=(8, 4), resize_filter='lanczos', verbose=False)
    x = ImageFolderDataset(str(tmp_path / 'out.zip'))[0][0]
    assert x.shape == (3, 8, 8)
    assert np.all(x[:, :2] == 0) and np.all(x[:, 6:] == 0) and np.all(x[:, 2:6] == 200)


def test_tool_max_images_and_cli_errors(tmp_path):
    write_folder(str(tmp_path / 'src'), random_images(5))
    runner = CliRunner()
    res = runner.invoke(dataset_tool.main, ['--source', str(tmp_path / 'src'), '--dest', str(tmp_path / 'o.zip'), '--max-images', '2'])
    assert res.exit_code == 0, res.output
    assert len(ImageFolderDataset(str(tmp_path / 'o.zip'))) == 2

    res = runner.invoke(dataset_tool.main, ['--source', str(tmp_path / 'missing'), '--dest', str(tmp_path / 'x.zip')])
    assert res.exit_code == 1 and 'no such file or folder' in res.output and 'Traceback' not in res.output
    assert not (tmp_path / 'x.zip').exists()

    # Non-square output fails before anything is left behind.
    res = runner.invoke(dataset_tool.main, ['--source', str(tmp_path / 'src'), '--dest', str(tmp_path / 'y.zip'), '--resolution', '8x4'])
    assert res.exit_code == 1 and 'must be square' in res.output
    assert not any(p.name.startswith('.y.zip') or p.name == 'y.zip' for p in tmp_path.iterdir())


def test_tool_lmdb_needs_package(tmp_path):
    (tmp_path / 'church_lmdb').mkdir()
    (tmp_path / 'church_lmdb' / 'data.mdb').write_bytes(b'')
    try:
        import lmdb  # noqa: F401
        pytest.skip('lmdb is installed')
    except ImportError:
        pass
    with pytest.raises(UserError, match='pip install lmdb'):
        dataset_tool.convert_dataset(str(tmp_path / 'church_lmdb'), str(tmp_path / 'o.zip'), verbose=False)

# ---------------------------------------------------------------------------------------------
# The built-in sample dataset.


def test_sample_dataset_deterministic_fast_and_readable(tmp_path):
    # No wall-clock assertion (the machine is shared): its speed is a benchmark's business.
    labels = sample_data.make_sample_dataset(str(tmp_path / 'a.zip'), num_images=150, preview=str(tmp_path / 'grid.png'))
    sample_data.make_sample_dataset(str(tmp_path / 'b.zip'), num_images=150)
    sample_data.make_sample_dataset(str(tmp_path / 'c.zip'), num_images=150, seed=1)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ('a.zip', 'b.zip', 'c.zip')]
    assert digest[0] == digest[1] and digest[0] != digest[2]

    ds = ImageFolderDataset(str(tmp_path / 'a.zip'), use_labels=True)
    assert len(ds) == 150 and ds.image_shape == [3, 32, 32]
    assert ds.label_dim == sample_data.NUM_CLASSES and set(labels) == set(range(sample_data.NUM_CLASSES))
    images = np.stack([ds[i][0] for i in range(64)]).astype(np.float32)
    # Diverse: no two images alike, and real structure (not flat colour) within each.
    flat = images.reshape(64, -1)
    dists = np.sqrt(((flat[:, None] - flat[None]) ** 2).mean(-1))
    assert dists[~np.eye(64, dtype=bool)].min() > 10
    assert images.std(axis=(2, 3)).mean() > 15
    assert PIL.Image.open(tmp_path / 'grid.png').size == (8 * 32, 8 * 32)


def test_sample_dataset_via_tool(tmp_path):
    runner = CliRunner()
    res = runner.invoke(dataset_tool.main, ['--sample', '--dest', str(tmp_path / 's'), '--max-images', '20', '--resolution', '16x16'])
    assert res.exit_code == 0, res.output
    ds = ImageFolderDataset(str(tmp_path / 's'), use_labels=True)
    assert len(ds) == 20 and ds.resolution == 16 and ds.has_labels
    # Same images as the zip writer produces.
    ref = dict((i, img) for i, img, _ in sample_data.sample_images(20, 16, 0))
    assert np.array_equal(ds[7][0], ref[7].transpose(2, 0, 1))
