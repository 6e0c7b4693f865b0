"""--ratio bounds of channel pruning: (0, 1) by default, [0, 1) only where a zero ratio is allowed."""
import math

import pytest

import dnnlib
from pruning import channels


@pytest.mark.parametrize('ratio', [0, 0.0, 1, 1.5, -0.1, math.nan, math.inf])
def test_default_ratio_must_lie_in_the_open_unit_interval(ratio):
    with pytest.raises(dnnlib.util.UserError, match=r'--ratio: .* is outside \(0, 1\)'):
        channels.check_ratio(ratio)


def test_allow_zero_admits_zero_only():
    channels.check_ratio(0, allow_zero=True)
    channels.check_ratio(0.7)
    with pytest.raises(dnnlib.util.UserError, match=r'outside \[0, 1\)'):
        channels.check_ratio(1.0, allow_zero=True)
