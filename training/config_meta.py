"""The metadata blocks of a configs/*.yaml file: ``paper:`` (where the row is in the paper and what
the paper reports) and ``prune:`` (the prune.py options that make the config's student).

They are not training options: ``train.py --config`` takes them out of the file, checks them here
(one-line ``UserError`` on a wrong key or type) and prints them in its summary. The schema:

    paper:  table (int or null: not a paper row), row (str), setting (str), and the paper's numbers
            fid, precision, recall, density, coverage, ssim (float or null = "—": not given)
    prune:  method (str), ratio (float in (0, 1)), and any other prune.py option by its CLI name
            without the leading dashes (a scalar value)
"""
import math

import dnnlib

PAPER_TEXT_KEYS = ('row', 'setting')
PAPER_NUMBER_KEYS = ('fid', 'precision', 'recall', 'density', 'coverage', 'ssim')
PAPER_KEYS = ('table',) + PAPER_TEXT_KEYS + PAPER_NUMBER_KEYS
META_KEYS = ('paper', 'prune')


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_paper(block, where):
    if not isinstance(block, dict):
        raise dnnlib.util.UserError(f'{where}: paper: expected a mapping of {", ".join(PAPER_KEYS)}')
    unknown = [str(k) for k in block if k not in PAPER_KEYS]
    if unknown:
        raise dnnlib.util.UserError(f'{where}: paper: unknown keys {", ".join(unknown)} (expected {", ".join(PAPER_KEYS)})')
    for key in ('table', 'row'):
        if key not in block:
            raise dnnlib.util.UserError(f'{where}: paper: needs "{key}"')
    table = block['table']
    if table is not None and (isinstance(table, bool) or not isinstance(table, int) or table < 1):
        raise dnnlib.util.UserError(f'{where}: paper: table must be a positive integer or null, got {table!r}')
    for key in PAPER_TEXT_KEYS:
        if key in block and not (isinstance(block[key], str) and block[key].strip()):
            raise dnnlib.util.UserError(f'{where}: paper: {key} must be a non-empty string, got {block[key]!r}')
    for key in PAPER_NUMBER_KEYS:
        value = block.get(key)
        if value is not None and not _is_number(value):
            raise dnnlib.util.UserError(f'{where}: paper: {key} must be a number or null, got {value!r}')
    return dnnlib.EasyDict(block)


def check_prune(block, where):
    if not isinstance(block, dict):
        raise dnnlib.util.UserError(f'{where}: prune: expected a mapping of prune.py options (method, ratio, ...)')
    for key in ('method', 'ratio'):
        if key not in block:
            raise dnnlib.util.UserError(f'{where}: prune: needs "{key}"')
    if not (isinstance(block['method'], str) and block['method']):
        raise dnnlib.util.UserError(f'{where}: prune: method must be a string, got {block["method"]!r}')
    if not (_is_number(block['ratio']) and 0 < block['ratio'] < 1):
        raise dnnlib.util.UserError(f'{where}: prune: ratio must be a number in (0, 1), got {block["ratio"]!r}')
    for key, value in block.items():
        if not isinstance(key, str) or key.startswith('-'):
            raise dnnlib.util.UserError(f'{where}: prune: {key!r} is not a prune.py option name (without dashes)')
        if not (isinstance(value, (str, bool)) or _is_number(value)):
            raise dnnlib.util.UserError(f'{where}: prune: {key} must be a single value, got {value!r}')
    return dnnlib.EasyDict(block)


def split_config(data, where):
    """(training options, metadata) of a config mapping; metadata = EasyDict with the blocks present."""
    options = {k: v for k, v in data.items() if k not in META_KEYS}
    meta = dnnlib.EasyDict()
    if data.get('paper') is not None:
        meta.paper = check_paper(data['paper'], where)
    if data.get('prune') is not None:
        meta.prune = check_prune(data['prune'], where)
    return options, meta
