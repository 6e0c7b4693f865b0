"""EasyDict, downloads with a cache, and construct-by-name helpers.

Name-compatible with NVIDIA's ``dnnlib.util`` where official pickles and tools rely on it
(``EasyDict``, ``open_url``, ``construct_class_by_name``).
"""
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
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f'{cache_file}.tmp.{os.getpid()}'
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, cache_file)
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


def get_obj_by_name(name):
    module, local = get_module_from_obj_name(name)
    obj = module
    for part in local.split('.') if local else []:
        obj = getattr(obj, part)
    return obj


def call_func_by_name(*args, func_name=None, **kwargs):
    assert func_name is not None
    func = get_obj_by_name(func_name)
    assert callable(func)
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    return call_func_by_name(*args, func_name=class_name, **kwargs)


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


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class atomic_open:
    """``with atomic_open(path, 'wb') as f:`` writes to a temporary name, renamed on success."""

    def __init__(self, path, mode='wb'):
        assert 'w' in mode
        self.path, self.mode = path, mode

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix='.' + os.path.basename(self.path) + '.', suffix='.tmp', dir=folder)
        self.f = os.fdopen(fd, self.mode)
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.chmod(self.tmp, _umask_mode())
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        return False


def exit_on_user_error(fn):
    """Decorator for CLI entry points: a ``UserError`` becomes one line on stderr and exit 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(1)
    return wrapper
