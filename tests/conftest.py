"""Shared test set-up: repository root on sys.path, the shared fixtures folder, small thread count."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get('SVS_SHARED_DIR', ROOT.parent / 'shared'))
FIXTURES = SHARED / 'fixtures' / 'official'


# The official-fixture tests must not pass silently without their ground truth: a missing
# fixtures folder FAILS them, unless SVS_ALLOW_MISSING_FIXTURES=1 says so explicitly (then they skip).
ALLOW_MISSING_FIXTURES = os.environ.get('SVS_ALLOW_MISSING_FIXTURES', '') not in ('', '0')


@pytest.fixture(scope='session')
def fixtures_dir():
    if not FIXTURES.is_dir():
        message = (f'official fixtures not found at {FIXTURES} (set SVS_SHARED_DIR to the shared folder, '
                   f'or SVS_ALLOW_MISSING_FIXTURES=1 to skip these tests)')
        if ALLOW_MISSING_FIXTURES:
            pytest.skip(message)
        pytest.fail(message)
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Downloads and caches go to a per-test folder, never to the user's ~/.cache.
    monkeypatch.setenv('SVS_CACHE_DIR', str(tmp_path / 'cache'))
