"""Run folders: the options file read back safely, one training process per folder, no orphans.

``train.py`` uses these around ``training_loop``; they hold no training logic.
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil

import dnnlib
from dnnlib.util import UserError

OPTIONS_FILE = 'training_options.json'
LOCK_FILE = '.train.lock'
_SNAPSHOT_RE = re.compile(r'^network-snapshot-\d{6,}(\.\d{3})?\.pkl$')


def read_training_options(run_dir):
    """``training_options.json`` as an EasyDict, after checking that every class or function name
    in it is on dnnlib's allow-list and that its dataset is one of our dataset classes."""
    path = os.path.join(run_dir, OPTIONS_FILE)
    try:
        with open(path, 'rt', encoding='utf-8') as f:
            c = json.load(f, object_hook=dnnlib.EasyDict)
    except OSError as e:
        raise UserError(f'{path}: cannot read it ({e.strerror or e})') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(c, dict):
        raise UserError(f'{path}: expected a JSON object of training options')
    dnnlib.util.check_allowed_names(c, OPTIONS_FILE)
    if c.get('training_set_kwargs') is not None:
        dnnlib.util.check_dataset_kwargs(c.training_set_kwargs, f'{OPTIONS_FILE}: training_set_kwargs')
    return c


def has_snapshot(run_dir):
    return os.path.isdir(run_dir) and any(_SNAPSHOT_RE.match(name) for name in os.listdir(run_dir))


@contextlib.contextmanager
def locked(run_dir):
    """Hold an exclusive lock on ``run_dir`` (``.train.lock``, released when the process ends, even
    by SIGKILL); a second training process on the same folder gets a UserError naming the holder."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f'{run_dir}: cannot create the run lock ({e.strerror or e})') from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode('ascii', 'replace').strip() or 'unknown'
            raise UserError(f'{run_dir}: another training process (pid {holder}) is using this run folder') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode('ascii'), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def removed_on_failure(run_dir, enabled=True):
    """Remove ``run_dir`` when the block fails before any network snapshot was written in it, so a
    run that never got going leaves no orphan folder behind."""
    try:
        yield
    except BaseException:
        if enabled and os.path.isdir(run_dir) and not has_snapshot(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
