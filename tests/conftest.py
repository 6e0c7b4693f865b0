"""Shared test set-up: repository root on sys.path, the shared fixtures folder, small thread count."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get('SVS_SHARED_DIR', ROOT.parent / 'shared'))
FIXTURES = SHARED / 'fixtures' / 'official'


@pytest.fixture(scope='session')
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f'fixtures not found at {FIXTURES}')
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Downloads and caches go to a per-test folder, never to the user's ~/.cache.
    monkeypatch.setenv('SVS_CACHE_DIR', str(tmp_path / 'cache'))
