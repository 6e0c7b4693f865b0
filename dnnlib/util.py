"""EasyDict, downloads with a cache, and construct-by-name helpers.

Name-compatible with NVIDIA's ``dnnlib.util`` where official pickles and tools rely on it
(``EasyDict``, ``open_url``, ``construct_class_by_name``).
"""
import errno
import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


class UserError(Exception):
    """An expected failure caused by the user's input; CLIs print it as one line and exit 1."""


# ---------------------------------------------------------------------------------------------
# Cache directory and downloads.

def make_cache_dir_path(*paths):
    """Where downloads are cached: $SVS_CACHE_DIR, $DNNLIB_CACHE_DIR, or ~/.cache/dnnlib."""
    for var in ('SVS_CACHE_DIR', 'DNNLIB_CACHE_DIR'):
        if os.environ.get(var):
            return os.path.join(os.environ[var], *paths)
    home = os.environ.get('HOME') or os.environ.get('USERPROFILE') or tempfile.gettempdir()
    return os.path.join(home, '.cache', 'dnnlib', *paths)


def is_url(obj, allow_file_urls=False):
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        res = urllib.parse.urlparse(obj)
        return bool(res.scheme and res.netloc and '.' in res.netloc)
    except Exception:
        return False


def url_cache_name(url):
    """File name a URL is cached under: md5 of the URL plus a readable tail."""
    digest = hashlib.md5(url.encode('utf-8')).hexdigest()
    tail = re.sub(r'[^0-9a-zA-Z._-]+', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'file'
    return f'{digest}_{tail}'


def _local_path_from_file_url(url):
    path = urllib.parse.urlparse(url).path
    if re.match(r'^/[a-zA-Z]:', path):  # file:///C:/... on Windows
        path = path[1:]
    return urllib.request.url2pathname(path)


def open_url(url, cache_dir=None, num_attempts=3, verbose=True, return_filename=False, cache=True,
             local_dirs=(), timeout=60):
    """Open a local path or a URL as a binary file object (or return a local filename).

    URLs are downloaded once into ``cache_dir`` (default: ``make_cache_dir_path('downloads')``),
    written to a temporary name and renamed, so an interrupted download never leaves a bad file.
    ``local_dirs``: folders searched for a file of the URL's base name before downloading, for
    offline clusters (e.g. ``--detector-dir``). Raises ``UserError`` with one clear line when
    nothing can be had.
    """
    assert num_attempts >= 1
    url = os.fspath(url) if isinstance(url, os.PathLike) else url
    if not isinstance(url, str):
        raise UserError(f'expected a path or URL, got {type(url).__name__}')

    # Plain paths and file:// URLs.
    if not is_url(url) or url.startswith('file://'):
        path = _local_path_from_file_url(url) if url.startswith('file://') else url
        if os.path.isdir(path):
            raise UserError(f'{path}: is a directory, expected a file')
        if not os.path.isfile(path):
            if is_url(url, allow_file_urls=True) or '://' in url:
                raise UserError(f'{url}: no such file')
            raise UserError(f'{path}: no such file')
        return path if return_filename else open(path, 'rb')

    # A copy in one of the local folders wins over the network.
    base = os.path.basename(urllib.parse.urlparse(url).path)
    for folder in local_dirs or ():
        if folder and base and os.path.isfile(os.path.join(folder, base)):
            path = os.path.join(folder, base)
            return path if return_filename else open(path, 'rb')

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    cache_file = os.path.join(cache_dir, url_cache_name(url))
    if cache and os.path.isfile(cache_file):
        return cache_file if return_filename else open(cache_file, 'rb')

    if os.environ.get('SVS_OFFLINE') == '1':
        raise UserError(f'{url}: not in the cache ({cache_file}) and SVS_OFFLINE=1')

    data = None
    last_error = None
    for attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {url} ...', end='', flush=True, file=sys.stderr)
            with urllib.request.urlopen(url, timeout=timeout) as res:
                data = res.read()
            if verbose:
                print(f' {len(data) / 2**20:.1f} MiB', file=sys.stderr)
            break
        except Exception as e:  # network errors of every kind
            last_error = e
            if verbose:
                print(' failed', file=sys.stderr)
    if data is None:
        raise UserError(f'{url}: cannot download ({type(last_error).__name__}: {last_error}) and no cached copy at {cache_file}')

    if cache:
        atomic_write_bytes(cache_file, data)
        if return_filename:
            return cache_file
    if return_filename:
        raise UserError('return_filename needs cache=True for URLs')
    return io.BytesIO(data)


# ---------------------------------------------------------------------------------------------
# Construct objects by name.

def get_module_from_obj_name(obj_name):
    parts = obj_name.split('.')
    for i in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module, '.'.join(parts[i:])
    raise ImportError(obj_name)


# Names that ``construct_class_by_name`` / ``call_func_by_name`` may resolve. They reach us from
# files (training_options.json, a snapshot's training_set_kwargs, a YAML config), so only public
# classes and functions defined in these modules of ours qualify (``training.dataset``: dataset
# classes only), plus torch's optimizers. A new module of ours whose names travel in option
# files is added here.
ALLOWED_NAME_MODULES = ('training.networks_stylegan2', 'training.networks_stylegan3', 'training.augment',
                        'training.loss', 'training.distill', 'training.student_init', 'training.dataset')
DATASET_MODULE = 'training.dataset'


def check_allowed_name(name, where='class_name', datasets_only=False):
    """The object ``name`` stands for, if it is on the allow-list; else a one-line ``UserError``.

    Resolution never imports more than the named module of the allow-list and never walks
    attributes: ``training.dataset.os.system`` or ``torch.hub.load`` are refused before any import.
    """
    if not isinstance(name, str) or not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+', name):
        raise UserError(f'{where}: {name!r} is not a dotted class or function name')
    module_name, _, local = name.rpartition('.')
    modules = (DATASET_MODULE,) if datasets_only else ALLOWED_NAME_MODULES
    obj = None
    if module_name in modules and not local.startswith('_'):
        module = importlib.import_module(module_name)
        obj = module.__dict__.get(local)
        orig = obj.__mro__[1] if isinstance(obj, type) and len(obj.__mro__) > 1 and obj.__module__ == 'torch_utils.persistence' else obj
        if getattr(orig, '__module__', None) != module_name or not callable(obj):
            obj = None
        elif module_name == DATASET_MODULE and not (isinstance(obj, type) and hasattr(obj, '__getitem__')):
            obj = None
    elif module_name == 'torch.optim' and not datasets_only and not local.startswith('_'):
        import torch
        obj = getattr(torch.optim, local, None)
        if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
            obj = None
    if obj is None:
        what = f'a dataset class of {DATASET_MODULE}' if datasets_only else 'one of our classes or functions'
        raise UserError(f'{where}: refusing {name!r}: not {what} (names read from files must be on the allow-list '
                        f'in dnnlib/util.py)')
    return obj


def check_allowed_names(value, where='options'):
    """Check every ``class_name`` / ``func_name`` in a nested structure of dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ('class_name', 'func_name'):
                check_allowed_name(item, f'{where}.{key}')
            else:
                check_allowed_names(item, f'{where}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_allowed_names(item, f'{where}[{i}]')


def check_dataset_kwargs(kwargs, where='training_set_kwargs'):
    """Dataset kwargs read from a file: a dict whose class_name is a dataset class of ours."""
    if not isinstance(kwargs, dict):
        raise UserError(f'{where}: expected a dict of dataset options, found {type(kwargs).__name__}')
    if 'class_name' in kwargs:  # without one nothing is named (callers default to ImageFolderDataset)
        check_allowed_name(kwargs['class_name'], f'{where}.class_name', datasets_only=True)
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise UserError(f'{where}: {key!r} is not an option name')
    return kwargs


def get_obj_by_name(name):
    module, local = get_module_from_obj_name(name)
    obj = module
    for part in local.split('.') if local else []:
        obj = getattr(obj, part)
    return obj


# The three below resolve any name, as NVIDIA's do, for specs written in code. A name read from a
# file goes through check_allowed_name / check_allowed_names / check_dataset_kwargs first.

def call_func_by_name(*args, func_name=None, **kwargs):
    assert func_name is not None
    func = get_obj_by_name(func_name)
    assert callable(func)
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def strict_json(obj):
    """``obj`` with NaN and infinities replaced by None, so ``json.dumps`` writes strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float('inf'), float('-inf')) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def format_time(seconds):
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h'


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


TEMP_SUFFIX = '.tmp'


def _temp_name(path):
    folder = os.path.dirname(os.path.abspath(path))
    return folder, '.' + os.path.basename(path) + '.'


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    with atomic_open(path, 'wb') as f:
        f.write(data)


class atomic_open:
    """``with atomic_open(path, 'wb') as f:`` writes to a temporary name, renamed on success.

    The temporary (``.<name>.<random>.tmp`` beside ``path``) is removed whenever anything fails,
    including the final flush/close (a full disk) or the rename; ``remove_stale_temporaries``
    removes those a killed process left behind.
    """

    def __init__(self, path, mode='wb'):
        assert 'w' in mode
        self.path, self.mode = path, mode
        self.tmp = None

    def __enter__(self):
        folder, prefix = _temp_name(self.path)
        if os.path.isdir(self.path):
            raise UserError(f'{self.path}: is a directory, expected a file name')
        try:
            os.makedirs(folder, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=folder)
        except OSError as e:
            raise UserError(f'{self.path}: cannot write here ({e.strerror or e})') from None
        try:
            self.f = os.fdopen(fd, self.mode)
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self.f

    def _discard(self):
        try:
            if self.tmp is not None and os.path.lexists(self.tmp):
                os.remove(self.tmp)
        except OSError:
            pass

    def __exit__(self, exc_type, exc, tb):
        try:
            self.f.close()
            if exc_type is None:
                os.chmod(self.tmp, _umask_mode())
                os.replace(self.tmp, self.path)
                self.tmp = None
        except OSError as e:
            if e.filename is None:
                e.filename = self.path  # so the one-line message names the file
            raise
        finally:
            self._discard()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = self.path
        return False


def remove_stale_temporaries(folder):
    """Remove the ``.<name>.<random>.tmp`` files that ``atomic_open`` leaves when a process is killed.

    Only names of that exact shape whose target name does not start with a dot are touched;
    returns the names removed.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        m = re.fullmatch(r'\.([^.].*)\.[A-Za-z0-9_]{8}\.tmp', name)
        if m and os.path.isfile(os.path.join(folder, name)):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


_DISK_ERRNOS = {errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded',
                errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
                errno.EPERM: 'operation not permitted', errno.EFBIG: 'file too large', errno.EIO: 'input/output error'}


def exit_on_user_error(fn):
    """Decorator for CLI entry points: expected failures become one line on stderr.

    ``UserError``, a full disk, a read-only or unwritable path: ``error: ...`` and exit 1.
    Ctrl-C: ``interrupted`` and exit 130 (as a shell reports SIGINT). Anything else is a bug and
    keeps its traceback.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            if e.errno not in _DISK_ERRNOS:
                raise
            name = f'{e.filename}: ' if e.filename else ''
            print(f'error: {name}{_DISK_ERRNOS[e.errno]}', file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print('interrupted', file=sys.stderr)
            sys.exit(130)
    return wrapper
