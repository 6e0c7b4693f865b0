"""Multi-process details on CPU with gloo: one process per simulated node (as ``torchrun --nnodes``
starts them: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR=127.0.0.1), per-node caches.

* a failure of rank 0 inside its metric work ends the other rank promptly with the message (the
  other rank sits in a collective, where it would otherwise wait for the 30-minute gloo timeout);
* two simulated nodes train the same model as one process (same batch, one round per rank);
* ``node_leader_first``: each node's local rank 0 fills that node's cache before its other ranks
  start, so a download happens once per node.
"""
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.sample_data import make_sample_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--cfg', 'cifar', '--cbase', '256', '--cmax', '32', '--map-depth', '2', '--mbstd-group', '2',
        '--batch', '4', '--batch-gpu', '2', '--aug', 'noaug', '--tick', '0.008', '--snap', '1',
        '--device', 'cpu', '--grid', '2x2', '--workers', '0', '--seed', '5']
GUARD_S = 120  # a hang would last until the gloo timeout (30 minutes); this only bounds the test


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp('mp_data') / 'sample32.zip'
    make_sample_dataset(str(path), num_images=16, resolution=32, seed=0)
    return str(path)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _node_env(rank, world, port, cache_dir, local_rank=0):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE='1',
               MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), DNNLIB_CACHE_DIR=str(cache_dir),
               OMP_NUM_THREADS=str(torch.get_num_threads()),  # as the in-process reference: same conv reductions
               PYTHONPATH=f'{ROOT}{os.pathsep}{ROOT / "tests"}')
    env.pop('SVS_CACHE_DIR', None)
    return env


def _start_nodes(driver, args, tmp_path, world=2):
    port = _free_port()
    procs = []
    for rank in range(world):
        env = _node_env(rank, world, port, tmp_path / f'cache-node{rank}')
        procs.append(subprocess.Popen([sys.executable, '-c', driver, *[str(a) for a in args]], env=env, cwd=str(ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=GUARD_S)
        outputs.append((proc.returncode, out, err))
    return outputs


_FAILING_METRICS = r'''
import os, sys, torch
import dnnlib
from metrics import metric_main

def calc_metric(**kwargs):
    if int(os.environ['RANK']) == 0:
        raise dnnlib.util.UserError('injected failure in the metrics of rank 0')
    torch.distributed.barrier()  # rank 1: inside the metric's collectives, waiting for rank 0
    raise AssertionError('rank 1 left the collective')
metric_main.calc_metric = calc_metric
import train
train.main(sys.argv[1:])
'''


def test_rank0_failure_in_metrics_stops_every_rank(data_zip, tmp_path):
    start = time.monotonic()
    outputs = _start_nodes(_FAILING_METRICS, ['--outdir', tmp_path / 'runs', '--data', data_zip, '--kimg', '0.008',
                                              '--metrics', 'fid50k_full', *TINY], tmp_path)
    elapsed = time.monotonic() - start
    (rc0, out0, err0), (rc1, _out1, err1) = outputs
    assert rc0 != 0 and rc1 != 0, (rc0, rc1, err0[-2000:], err1[-2000:])
    assert 'error: injected failure in the metrics of rank 0' in out0 + err0  # rank 0 tees stderr into its log
    assert 'rank 1: stopping, rank 0 failed: injected failure in the metrics of rank 0' in err1, err1[-2000:]
    assert 'rank 1 left the collective' not in err1
    assert elapsed < GUARD_S
    # The snapshot written before the metrics stays.
    assert list((tmp_path / 'runs').glob('*/network-snapshot-000000.pkl'))


_TRAIN = r'''
import sys
import train
train.main(sys.argv[1:])
'''


def _weights(pkl):
    with open(pkl, 'rb') as f:
        data = pickle.load(f)
    return {name: {k: v.clone() for k, v in data[name].state_dict().items()} for name in ('G', 'D', 'G_ema')}


def test_two_simulated_nodes_match_one_process(data_zip, tmp_path):
    args = ['--data', data_zip, '--kimg', '0.008', '--metrics', 'none', *TINY]
    # The reference in a fresh interpreter too, so that both sides run the same code and settings.
    env = dict(_node_env(0, 1, 0, tmp_path / 'cache-single'))
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key)
    one = subprocess.run([sys.executable, '-c', _TRAIN, '--outdir', str(tmp_path / 'one'), *args], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=GUARD_S)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    outputs = _start_nodes(_TRAIN, ['--outdir', tmp_path / 'nodes', *args], tmp_path)
    for rc, out, err in outputs:
        assert rc == 0, out[-2000:] + err[-2000:]
    (one,) = (tmp_path / 'one').glob('*/network-snapshot-000000.008.pkl')
    (two,) = (tmp_path / 'nodes').glob('*/network-snapshot-000000.008.pkl')
    a, b = _weights(one), _weights(two)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)  # batch 4 = 2 ranks x 1 round of 2


_LEADER_FIRST = r'''
import os, sys, time, torch
from torch_utils import distributed
torch.distributed.init_process_group('gloo', init_method='env://')
cache = os.environ['DNNLIB_CACHE_DIR']
os.makedirs(cache, exist_ok=True)
target = os.path.join(cache, 'weights.bin')
rank = torch.distributed.get_rank()
with distributed.node_leader_first(rank):
    if not os.path.exists(target):
        time.sleep(0.5)  # a slow download: the node's other ranks must wait for it
        with open(target, 'w') as f:
            f.write(str(rank))
        with open(os.path.join(sys.argv[1], f'download-{rank}'), 'w') as f:
            f.write('')
torch.distributed.destroy_process_group()
'''


@pytest.mark.parametrize('nodes', [1, 2])
def test_downloads_once_per_node(nodes, tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        node = rank if nodes == 2 else 0
        env = _node_env(rank, 2, port, tmp_path / f'cache-node{node}', local_rank=0 if nodes == 2 else rank)
        procs.append(subprocess.Popen([sys.executable, '-c', _LEADER_FIRST, str(tmp_path)], env=env, cwd=str(ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _out, err = proc.communicate(timeout=GUARD_S)
        assert proc.returncode == 0, err[-2000:]
    downloads = sorted(p.name for p in tmp_path.glob('download-*'))
    assert downloads == (['download-0'] if nodes == 1 else ['download-0', 'download-1'])
