"""training_stats: moments per interval, keep_previous, regex, exact state round trip."""
import numpy as np
import pytest
import torch

from torch_utils import training_stats


def test_collector_interval_moments_and_keep_previous():
    col = training_stats.Collector(regex='Loss/.*')
    values = np.array([1.0, 2.0, 4.0, 7.0])
    training_stats.report('Loss/a', torch.tensor(values[:2]))
    training_stats.report('Loss/a', values[2:])
    training_stats.report('Loss/b', 5.0)
    training_stats.report('Other/x', 1.0)       # not matched by the regex
    col.update()
    assert col.names() == ['Loss/a', 'Loss/b']
    assert col.num('Loss/a') == 4
    assert col.mean('Loss/a') == pytest.approx(values.mean())
    assert col.std('Loss/a') == pytest.approx(values.std())
    d = col.as_dict()
    assert set(d) == {'Loss/a', 'Loss/b'} and d['Loss/b'].num == 1 and d['Loss/b'].std == 0
    # Next interval: only new values count; a name without new values keeps its previous value.
    training_stats.report('Loss/a', [10.0])
    col.update()
    assert col.num('Loss/a') == 1 and col.mean('Loss/a') == 10.0
    assert col.mean('Loss/b') == 5.0
    assert training_stats.report0('Loss/c', 3.0) == 3.0  # rank 0 in a single process


def test_state_round_trip_restores_pending_sums_exactly():
    a = training_stats.Collector(regex='Loss/signs/real')
    for v in [1.0, -1.0, 1.0]:
        training_stats.report('Loss/signs/real', v)
    state = a.state_dict()
    b = training_stats.Collector(regex='Loss/signs/real')  # also sees new reports from here on
    b.load_state_dict(state)
    for v in [1.0, 1.0]:
        training_stats.report('Loss/signs/real', v)
    a.update()
    b.update()
    assert a.num('Loss/signs/real') == b.num('Loss/signs/real') == 5
    assert a.mean('Loss/signs/real') == b.mean('Loss/signs/real') == pytest.approx(0.6)


def test_nan_values_are_counted_not_hidden():
    col = training_stats.Collector(regex='Loss/n')
    training_stats.report('Loss/n', [1.0, float('nan')])
    col.update()
    assert col.num('Loss/n') == 2 and np.isnan(col.mean('Loss/n'))
