"""Convert images into a training dataset (a zip or folder of PNGs plus dataset.json).

Examples:

\b
  # FFHQ at 256x256 from the 1024x1024 images: an exact 4x4 area average (box filter).
  python dataset_tool.py --source=~/downloads/ffhq/images1024x1024 --dest=~/datasets/ffhq-256x256.zip \\
      --resolution=256x256

\b
  # LSUN Church (needs `pip install lmdb`): center crop, then resize.
  python dataset_tool.py --source=~/downloads/lsun/church_outdoor_train_lmdb --dest=~/datasets/church-256x256.zip \\
      --transform=center-crop --resolution=256x256

\b
  # The built-in sample dataset (procedural 32x32 scenes, no download).
  python dataset_tool.py --sample --dest=~/datasets/sample-32x32.zip
"""
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile

import click
import numpy as np
import PIL.Image

import dnnlib
import dnnlib.cli
from training import dataset_archives, sample_data
from training.dataset import is_image_file

# ---------------------------------------------------------------------------------------------
# Sources: each yields dict(name=..., img=uint8 HWC array or None if unreadable, label=...).


class Source:
    def __init__(self, where, num_images, items):
        self.where = where
        self.num_images = num_images
        self.items = items


def _read_labels(where, read_json):
    """Labels by file name from a dataset.json, or None."""
    try:
        meta = json.loads(read_json())
    except Exception as e:
        raise dnnlib.util.UserError(f'{where}/dataset.json: not valid JSON ({e})') from None
    labels = meta.get('labels') if isinstance(meta, dict) else None
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in labels):
        raise dnnlib.util.UserError(f'{where}/dataset.json: "labels" must be a list of [file name, label] pairs')
    return {str(name).replace('\\', '/'): label for name, label in labels}


def _decode(data_or_file, where):
    try:
        with PIL.Image.open(data_or_file) as img:
            if img.mode not in ('L', 'RGB'):
                img = img.convert('L' if img.mode in ('1', 'LA', 'I', 'I;16', 'F') else 'RGB')
            return np.array(img, dtype=np.uint8)
    except Exception as e:
        raise dnnlib.util.UserError(f'{where}: unreadable image ({type(e).__name__}: {e})') from None


def _labelled_items(where, fnames, open_file, labels):
    if labels is not None:
        missing = [fname for fname in fnames if fname not in labels]
        if missing:
            raise dnnlib.util.UserError(f'{where}/dataset.json: no label for {len(missing)} of {len(fnames)} images (first: {missing[0]})')
    for fname in fnames:
        with open_file(fname) as f:
            img = _decode(f, f'{where}: {fname}')
        yield dict(name=fname, img=img, label=None if labels is None else labels[fname])


def open_folder(path, max_images):
    fnames = sorted(os.path.relpath(os.path.join(root, f), path).replace('\\', '/')
                    for root, _dirs, files in os.walk(path) for f in files)
    images = [f for f in fnames if is_image_file(f)]
    if not images:
        raise dnnlib.util.UserError(f'--source {path}: no images found')
    json_path = os.path.join(path, 'dataset.json')
    labels = _read_labels(path, lambda: open(json_path, 'rb').read()) if os.path.isfile(json_path) else None
    items = _labelled_items(path, images, lambda f: open(os.path.join(path, f), 'rb'), labels)
    return Source(path, min(len(images), max_images or len(images)), items)


def open_zip(path, max_images):
    zf = zipfile.ZipFile(path)
    names = sorted(n for n in zf.namelist() if not n.endswith('/'))
    images = [n for n in names if is_image_file(n)]
    if not images:
        raise dnnlib.util.UserError(f'--source {path}: no images found')
    labels = _read_labels(path, lambda: zf.read('dataset.json')) if 'dataset.json' in names else None
    items = _labelled_items(path, images, lambda n: zf.open(n, 'r'), labels)
    return Source(path, min(len(images), max_images or len(images)), items)


def open_lmdb(path, max_images):
    try:
        import lmdb
    except ImportError:
        raise dnnlib.util.UserError(f'--source {path}: reading LSUN lmdb folders needs the lmdb package (pip install lmdb)') from None
    try:
        txn = lmdb.open(path, readonly=True, lock=False).begin(write=False)
        num = txn.stat()['entries']
    except Exception as e:
        raise dnnlib.util.UserError(f'--source {path}: cannot open as lmdb ({type(e).__name__}: {e})') from None

    def items():
        for idx, (key, value) in enumerate(txn.cursor()):
            name = key.decode('ascii', 'replace')
            try:
                img = _decode(io.BytesIO(value), f'{path}: {name}')
            except dnnlib.util.UserError as e:
                print(f'skipping {e}', file=sys.stderr)  # LSUN has a few broken records
                img = None
            yield dict(name=name, img=img, label=None)
    return Source(path, min(num, max_images or num), items())


def open_source(source, max_images):
    source = os.path.expanduser(source)
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, 'data.mdb')):
            return open_lmdb(source, max_images)
        return open_folder(source, max_images)
    if os.path.isfile(source):
        if dataset_archives.is_cifar10(source):
            return Source(source, *dataset_archives.read_cifar10(source, max_images))
        if dataset_archives.is_mnist(source):
            return Source(source, *dataset_archives.read_mnist(source, max_images))
        if zipfile.is_zipfile(source):
            return open_zip(source, max_images)
        raise dnnlib.util.UserError(f'--source {source}: not a folder, a .zip or an lmdb folder')
    raise dnnlib.util.UserError(f'--source {source}: no such file or folder')

# ---------------------------------------------------------------------------------------------
# Transforms.


def resize(img, width, height, resize_filter):
    """Resize a uint8 HWC/HW array. The box filter with integer factors is an exact area average."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    if resize_filter == 'box' and w % width == 0 and h % height == 0:
        fy, fx = h // height, w // width
        blocks = img.reshape(height, fy, width, fx, *img.shape[2:]).astype(np.float64)
        return np.rint(blocks.mean(axis=(1, 3))).clip(0, 255).astype(np.uint8)
    method = PIL.Image.BOX if resize_filter == 'box' else PIL.Image.LANCZOS
    return np.array(PIL.Image.fromarray(img).resize((width, height), method))


def make_transform(transform, output_size, resize_filter):
    width, height = output_size if output_size is not None else (None, None)
    if transform in ('center-crop', 'center-crop-wide') and output_size is None:
        raise dnnlib.util.UserError(f'--transform={transform} needs --resolution=WxH')

    def none(img):
        if width is None:
            return img
        return resize(img, width, height, resize_filter)

    def center_crop(img):
        h, w = img.shape[:2]
        crop = min(h, w)
        img = img[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
        return resize(img, width, height, resize_filter)

    def center_crop_wide(img):
        # Keep the full width, crop the height to the output aspect ratio, letterbox into a square.
        h, w = img.shape[:2]
        ch = int(np.round(width * h / w))
        if w < width or ch < height:
            return None  # too small to be used
        img = img[(h - ch) // 2:(h + ch) // 2]
        img = resize(img, width, height, resize_filter)
        canvas = np.zeros([width, width, *img.shape[2:]], dtype=np.uint8)
        canvas[(width - height) // 2:(width + height) // 2, :] = img
        return canvas

    return {'none': none, 'center-crop': center_crop, 'center-crop-wide': center_crop_wide}[transform]

# ---------------------------------------------------------------------------------------------
# Destinations: written under a temporary name, renamed when complete.


class ZipDest:
    def __init__(self, path):
        self.path = path
        self.opener = dnnlib.util.atomic_open(path, 'wb')
        self.zf = zipfile.ZipFile(self.opener.__enter__(), 'w')

    def write(self, name, data):
        self.zf.writestr(sample_data.zip_entry(name), data)

    def finish(self, ok):
        try:
            self.zf.close()
        except BaseException as e:  # e.g. a full disk: the temporary goes, the error stays
            self.opener.__exit__(type(e), e, None)
            raise
        self.opener.__exit__(None if ok else RuntimeError, None, None)


class FolderDest:
    def __init__(self, path):
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise dnnlib.util.UserError(f'--dest {path}: exists and is not an empty folder')
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(path)) + '.', suffix='.tmp', dir=parent)

    def write(self, name, data):
        fname = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(fname), exist_ok=True)
        with open(fname, 'wb') as f:
            f.write(data)

    def finish(self, ok):
        if not ok:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o755)
        if os.path.isdir(self.path):
            os.rmdir(self.path)  # checked empty above
        os.replace(self.tmp, self.path)


def open_dest(dest):
    dest = os.path.expanduser(dest)
    if dest.lower().endswith('.zip'):
        return ZipDest(dest)
    return FolderDest(dest)

# ---------------------------------------------------------------------------------------------


def convert_dataset(source, dest, max_images=None, transform='none', resolution=None, resize_filter='box', verbose=True):
    """Convert ``source`` (folder, zip, lmdb) into ``dest`` (zip or folder). Returns the image count."""
    src = open_source(source, max_images)
    transform_image = make_transform(transform, resolution, resize_filter)
    out = open_dest(dest)
    ok = False
    labels = []
    shape = None
    skipped = 0
    written = 0
    last_print = start = time.time()
    try:
        for item in src.items:
            if written >= src.num_images:
                break
            img = item['img']
            img = transform_image(img) if img is not None else None
            if img is None:
                skipped += 1
                continue
            where = f'{src.where}: {item["name"]}'
            h, w = img.shape[:2]
            channels = img.shape[2] if img.ndim == 3 else 1
            if shape is None:
                shape = (h, w, channels)
                if w != h:
                    raise dnnlib.util.UserError(f'{where}: is {w}x{h} after --transform={transform}; training images must be square '
                                                f'(use --transform=center-crop and --resolution=NxN)')
                if w < 4 or w & (w - 1):
                    raise dnnlib.util.UserError(f'{where}: is {w}x{h}; the resolution must be a power of two (use --resolution)')
            elif (h, w, channels) != shape:
                raise dnnlib.util.UserError(f'{where}: is {w}x{h}x{channels}, but the first image is {shape[1]}x{shape[0]}x{shape[2]}; '
                                            f'all images must match (use --resolution)')
            name = sample_data.archive_fname(written)
            out.write(name, sample_data.encode_png(img))
            labels.append([name, item['label']])
            written += 1
            if verbose and time.time() - last_print > 3:
                last_print = time.time()
                rate = written / max(last_print - start, 1e-9)
                print(f'{written}/{src.num_images} images ({rate:.0f} img/s)', file=sys.stderr, flush=True)
        if written == 0:
            raise dnnlib.util.UserError(f'--source {src.where}: no usable images (all {skipped} were too small for the transform)')
        has_labels = any(label is not None for _name, label in labels)
        meta = {'labels': labels if has_labels else None}
        out.write('dataset.json', json.dumps(meta).encode('utf-8'))
        ok = True
    finally:
        out.finish(ok)
    if verbose:
        note = f', skipped {skipped} too small' if skipped else ''
        print(f'Wrote {written} images ({shape[1]}x{shape[0]}, {shape[2]} channels{note}) to {dest}', file=sys.stderr)
    return written


def parse_resolution(_ctx, _param, value):
    if value is None:
        return None
    parts = value.lower().split('x')
    try:
        width, height = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (int(parts[0]), int(parts[0]))
    except ValueError:
        raise click.BadParameter(f'expected WxH, e.g. 256x256, got {value!r}')
    if width < 1 or height < 1:
        raise click.BadParameter(f'expected positive sizes, got {value!r}')
    return width, height


@click.command(help=__doc__)
@click.option('--source', metavar='PATH', help='Input: a folder or .zip of images (with optional dataset.json), an LSUN lmdb folder, '
              'cifar-10-python.tar.gz, or MNIST train-images-idx3-ubyte.gz (labels file beside it).')
@click.option('--dest', metavar='PATH', required=True, help='Output: a .zip file or a new folder.')
@click.option('--max-images', metavar='INT', type=click.IntRange(min=1), help='Stop after this many images.')
@click.option('--transform', type=click.Choice(['none', 'center-crop', 'center-crop-wide']), default='none', show_default=True,
              help='Crop before resizing (center-crop-wide keeps the full width and letterboxes).')
@click.option('--resolution', metavar='WxH', callback=parse_resolution, help='Output size, e.g. 256x256.')
@click.option('--width', type=click.IntRange(min=1), help='Output width (stylegan2-ada spelling; with --height, instead of --resolution).')
@click.option('--height', type=click.IntRange(min=1), help='Output height (stylegan2-ada spelling).')
@click.option('--resize-filter', type=click.Choice(['box', 'lanczos']), default='box', show_default=True,
              help='Resampling filter. Our default differs from NVIDIA\'s (lanczos): box with integer factors is an '
                   'exact area average (FFHQ 1024 -> 256) with no ringing; pass lanczos to build NVIDIA\'s datasets.')
@click.option('--sample', is_flag=True, help='Write the built-in sample dataset (procedural scenes) instead of converting --source.')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the --sample dataset.')
@click.option('--preview', metavar='PNG', help='With --sample: also save an 8x8 preview grid.')
@dnnlib.util.exit_on_user_error
def main(source, dest, max_images, transform, resolution, width, height, resize_filter, sample, seed, preview):
    if width is not None or height is not None:
        if width is None or height is None:
            raise dnnlib.util.UserError('--width and --height: give both')
        if resolution is not None and resolution != (width, height):
            raise dnnlib.util.UserError(f'--resolution {resolution[0]}x{resolution[1]} disagrees with --width/--height {width}x{height}')
        resolution = (width, height)
    dest_path = os.path.expanduser(dest)
    if source is not None:
        dnnlib.cli.check_distinct(os.path.expanduser(source), dest_path)
    (dnnlib.cli.check_output_file if dest_path.lower().endswith('.zip') else dnnlib.cli.check_output_dir)(dest_path, '--dest')
    if sample:
        if source is not None:
            raise dnnlib.util.UserError('--sample and --source are exclusive')
        res = 32
        if resolution is not None:
            if resolution[0] != resolution[1]:
                raise dnnlib.util.UserError(f'--resolution: the sample dataset is square, got {resolution[0]}x{resolution[1]}')
            res = resolution[0]
        num = max_images or 2000
        t0 = time.time()
        if dest.lower().endswith('.zip'):
            sample_data.make_sample_dataset(os.path.expanduser(dest), num_images=num, resolution=res, seed=seed,
                                            preview=preview, verbose=True)
        else:
            _write_sample_folder(dest, num, res, seed, preview)
        print(f'Wrote the sample dataset ({num} images, {res}x{res}, seed {seed}) to {dest} in {time.time() - t0:.1f}s', file=sys.stderr)
        return
    if source is None:
        raise dnnlib.util.UserError('--source is required (or --sample for the built-in dataset)')
    if preview is not None:
        raise dnnlib.util.UserError('--preview is only for --sample')
    convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=resolution, resize_filter=resize_filter)


def _write_sample_folder(dest, num, res, seed, preview):
    if res < 8 or res & (res - 1):
        raise dnnlib.util.UserError(f'--resolution: the sample dataset needs a power of two >= 8, got {res}')
    out = FolderDest(os.path.expanduser(dest))
    ok = False
    labels, grid = [], []
    try:
        for idx, image, label in sample_data.sample_images(num, res, seed):
            out.write(sample_data.archive_fname(idx), sample_data.encode_png(image))
            labels.append([sample_data.archive_fname(idx), label])
            if len(grid) < 64:
                grid.append(image.transpose(2, 0, 1))
        out.write('dataset.json', json.dumps({'labels': labels}).encode('utf-8'))
        ok = True
    finally:
        out.finish(ok)
    if preview is not None:
        sample_data.save_image_grid(np.stack(grid), preview, grid_w=8)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
