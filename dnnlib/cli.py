"""Option checks every CLI shares: finite numbers, output paths that can be written, distinct files.

Each check is a plain function raising ``dnnlib.util.UserError`` (one line naming the option),
and the click parameter types below wrap them, so ``--glr nan`` or ``--outdir /etc/passwd/x`` fail
before any work starts, identically in every CLI.
"""
import math
import os
import tempfile

import click

from dnnlib.util import UserError


def check_finite(value, option, min=None, max=None, min_open=False):
    """``value`` as a float, refused when NaN/inf or outside [min, max] (``min_open``: min excluded)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f'{option}: {value!r} is not a number') from None
    if not math.isfinite(value):
        raise UserError(f'{option}: must be a finite number, got {value}')
    if min is not None and (value < min or (min_open and value == min)):
        raise UserError(f'{option}: must be {">" if min_open else ">="} {min:g}, got {value:g}')
    if max is not None and value > max:
        raise UserError(f'{option}: must be <= {max:g}, got {value:g}')
    return value


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_writable(folder, option, target):
    """Create and remove a file in ``folder``: the only test that also sees read-only mounts and root."""
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-test.', dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f'{option}: {target}: cannot write in {folder} ({e.strerror or e})') from None


def check_output_dir(path, option='--outdir'):
    """A folder that exists or can be created, and can be written."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'{option}: {path} exists and is not a directory')
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise UserError(f'{option}: {path}: {existing} is not a directory')
    _probe_writable(existing, option, path)
    return path


def check_output_file(path, option='--dest'):
    """A file name that is not a directory, in a folder that exists or can be created and written."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(os.sep):
        raise UserError(f'{option}: {path} is a directory, expected a file name')
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'{option}: {path}: {folder} is not a directory')
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        raise UserError(f'{option}: {path}: {existing} is not a directory')
    _probe_writable(existing, option, path)
    return path


def check_distinct(source, dest, source_option='--source', dest_option='--dest'):
    """Refuse writing ``dest`` over ``source`` (the same file, or the same folder)."""
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise UserError(f'{dest_option}: {dest} is the same file as {source_option}; choose another destination')
    if os.path.abspath(source) == os.path.abspath(dest):
        raise UserError(f'{dest_option}: {dest} is the same path as {source_option}; choose another destination')


class _Checked(click.ParamType):
    def _option(self, param):
        return param.opts[0] if param is not None and getattr(param, 'opts', None) else self.name

    def convert(self, value, param, ctx):
        try:
            return self.check(value, self._option(param))
        except UserError as e:
            self.fail(str(e).split(': ', 1)[-1] if str(e).startswith(self._option(param)) else str(e), param, ctx)


class FiniteFloat(_Checked):
    """A float option that refuses NaN and inf (and values outside [min, max])."""
    name = 'float'

    def __init__(self, min=None, max=None, min_open=False):
        self.min, self.max, self.min_open = min, max, min_open

    def check(self, value, option):
        return check_finite(value, option, min=self.min, max=self.max, min_open=self.min_open)


class OutputDir(_Checked):
    """A folder option that must be creatable and writable."""
    name = 'directory'

    def check(self, value, option):
        return check_output_dir(value, option)


class OutputFile(_Checked):
    """A file option (to be written) that must not be a directory, in a writable folder."""
    name = 'file'

    def check(self, value, option):
        return check_output_file(value, option)


def check_device(device, option='--device'):
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N`` (N visible), as ``torch.device``."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f'{option}: {device!r} is not a device (use cpu, cuda or cuda:N)') from None
    if dev.type not in ('cpu', 'cuda'):
        raise UserError(f'{option}: {device!r} is not supported (use cpu, cuda or cuda:N)')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f'{option}: {device}: no CUDA device is available')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f'{option}: {device}: only {torch.cuda.device_count()} CUDA devices are visible')
    return dev


def resolve_device(device, option='--device'):
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other value checked by ``check_device``."""
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return str(check_device(device, option))
