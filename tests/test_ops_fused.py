"""The fused Triton ops against the PyTorch reference, and ``bench/gpu_check.py --device cpu --tiny``.

Triton decides when it is first imported whether kernels run in its interpreter, so everything that
runs a kernel happens in one subprocess with ``TRITON_INTERPRET=1``: ``gpu_check.py --device cpu
--tiny`` (which sets it), whose JSON table holds one row per op check of
``torch_utils.ops.fused_checks`` (forward, gradient and gradient of gradient against
``impl='ref'`` in fp32, fp16 against fp32, gradcheck/gradgradcheck in fp64, factors 1/2/4) plus
the tiny training/distillation/StyleGAN3/DCP runs. The tests below read that table; the rest check
in-process, without triton, when the fused path is (not) chosen.
"""
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from torch_utils.ops import bias_act, filtered_lrelu, fused, fused_checks, upfirdn2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TRITON = importlib.util.find_spec('triton') is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason='triton is not installed (pip install -r requirements-test.txt)')

OP_CHECKS = ['filtered_lrelu/saved-for-backward'] + [c.name for c in fused_checks.cases(tiny=True)]


@pytest.fixture(scope='module')
def gpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'table.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    env.pop('TRITON_INTERPRET', None)  # the script must set it itself
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu_check.py'), '--device', 'cpu', '--tiny',
                           '--json-out', str(out)], capture_output=True, text=True, env=env, timeout=900)
    rows = json.loads(out.read_text()) if out.exists() else []
    return types.SimpleNamespace(proc=proc, rows={(r['part'], r['check']): r for r in rows})


@needs_triton
def test_gpu_check_tiny_passes(gpu_check):
    proc = gpu_check.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'PASSED: 0 failing rows' in proc.stdout
    assert 'Traceback' not in proc.stdout + proc.stderr
    parts = {part for part, _check in gpu_check.rows}
    assert {'ops', 'net', 'train', 'distill', 'sg3', 'dcp'} <= parts
    net = [r for (p, _c), r in gpu_check.rows.items() if p == 'net']
    assert net and all(r['status'] == 'PASS' for r in net), net
    for part in ('train', 'distill', 'sg3'):
        timed = [r for (p, _c), r in gpu_check.rows.items() if p == part and 'kimg' in r['numbers']]
        assert timed and all(r['status'] == 'PASS' for r in timed), timed
        assert all(float(r['numbers'].split(' s/kimg')[0]) > 0 for r in timed)


@needs_triton
@pytest.mark.parametrize('name', OP_CHECKS)
def test_fused_op_matches_reference(gpu_check, name):
    row = gpu_check.rows.get(('ops', name))
    assert row is not None, f'no row for {name}: ' + gpu_check.proc.stdout[-2000:] + gpu_check.proc.stderr[-2000:]
    assert row['status'] == 'PASS', row


def test_op_checks_cover_every_factor_dtype_and_order():
    names = set(OP_CHECKS)
    for op in ('bias_act', 'upfirdn2d', 'filtered_lrelu'):
        for kind in ('fp32', 'fp16', 'gradcheck'):
            assert any(n.startswith(op + '/') and n.endswith('/' + kind) for n in names), (op, kind)
    for factor in (1, 2, 4):
        for op in ('upfirdn2d', 'filtered_lrelu'):
            assert any(n.startswith(f'{op}/up{factor}-') for n in names)
            assert any(n.startswith(op + '/') and f'-down{factor}-' in n for n in names)


# ----------------------------------------------------------------------------------------------
# When the fused path is chosen (no kernel runs here).


def test_use_fused_rules(monkeypatch):
    cpu = torch.zeros([1])
    cuda_like = types.SimpleNamespace(device=torch.device('cuda'), dtype=torch.float16)
    monkeypatch.setattr(fused, '_triton_ok', True)
    assert not fused.use_fused('ref', cuda_like)
    assert fused.use_fused('triton', cpu)
    assert not fused.use_fused('cuda', cpu)       # CPU default: the PyTorch path
    assert fused.use_fused('cuda', cuda_like)
    previous = fused.set_enabled(False)
    try:
        assert not fused.use_fused('cuda', cuda_like)
        assert fused.use_fused('triton', cpu)
        fused.set_enabled('always')
        assert fused.use_fused('cuda', cpu) and not fused.use_fused('ref', cpu)
    finally:
        fused.set_enabled(previous)
    assert not fused.use_fused('cuda', types.SimpleNamespace(device=torch.device('cuda'), dtype=torch.bfloat16))
    monkeypatch.setattr(fused, '_triton_ok', False)  # no triton: CUDA tensors take the PyTorch path
    assert not fused.use_fused('cuda', cuda_like)
    with pytest.raises(AssertionError, match='impl must be one of'):
        fused.use_fused('cudnn', cpu)


def test_cpu_default_never_loads_kernels(monkeypatch):
    def refuse():
        raise AssertionError('the CPU default must not reach the Triton kernels')
    monkeypatch.setattr(fused, 'load_kernels', refuse)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 8, 8], generator=gen, requires_grad=True)
    b = torch.randn([3], generator=gen)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y1 = bias_act.bias_act(x, b, act='lrelu', clamp=0.5)
    y2 = upfirdn2d.upsample2d(x, f)
    y3 = filtered_lrelu.filtered_lrelu(x, f, f, b, up=2, down=2, padding=3, clamp=0.5)
    torch.autograd.grad(y1.sum() + y2.sum() + y3.sum(), x)
    ref = filtered_lrelu.filtered_lrelu(x, f, f, b, up=2, down=2, padding=3, clamp=0.5, impl='ref')
    assert torch.allclose(y3, ref, atol=1e-5)
    assert torch.equal(y1, bias_act.bias_act(x, b, act='lrelu', clamp=0.5, impl='ref'))


@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') == '1', reason='interpreter enabled in this process')
def test_fused_on_cpu_without_interpreter_is_refused():
    x = torch.zeros([1, 1, 4, 4])
    for call in (lambda: bias_act.bias_act(x, impl='triton'),
                 lambda: upfirdn2d.upfirdn2d(x, None, impl='triton'),
                 lambda: filtered_lrelu.filtered_lrelu(x, impl='triton')):
        with pytest.raises(AssertionError, match='TRITON_INTERPRET=1'):
            call()


def test_fused_passes_sizes_match_reference():
    """The pass plan (pure Python) gives the reference's output size for every factor and padding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn([1, 1, 7, 5], generator=gen)
    for taps, separable in (([1, 3, 3, 1], False), ([1, 2, 5, 2, 1], True)):
        f = upfirdn2d.setup_filter(taps, separable=separable)
        for up, down, pad in ((1, 1, [1, 1, 1, 1]), (2, 1, [2, 1, 2, 1]), (4, 2, [3, 2, -1, 4]), (1, 4, [2, 2, 2, 2])):
            passes = upfirdn2d.fused_passes(f, 5, 7, (up, up), (down, down), pad, False, 1)
            ref = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, impl='ref')
            assert passes[-1][5] == (ref.shape[3], ref.shape[2])
            back = upfirdn2d.transpose_passes(passes)
            assert back[-1][5] == (5, 7) and len(back) == len(passes)
            np.testing.assert_array_equal(back[0][0].numpy(), passes[-1][0].flip([0, 1]).numpy())
