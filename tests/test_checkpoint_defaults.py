"""A network pickle that leaves constructor arguments out gets the defaults of its own source tree.

stylegan2-ada-pytorch's classes default to ``num_fp16_res=0, conv_clamp=None`` (ours: 4 and 256),
stylegan3's StyleGAN2 mapping to ``w_avg_beta=0.998`` (ours: 0.995). The pickles here are stand-ins:
our networks pickled in NVIDIA's persistence-v6 layout with *bare* constructor kwargs, whose
embedded source is a skeleton written from our classes' own signatures with the other tree's
defaults put in (no NVIDIA code). The loader reads those defaults from the source without running it.
"""
import ast
import inspect
import io
import pickle

import pytest

from torch_utils import persistence
from training import checkpoints, networks_stylegan2

BARE_G = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32))
BARE_D = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32)

SG2ADA = {('SynthesisNetwork', 'num_fp16_res'): 0, ('SynthesisBlock', 'conv_clamp'): None,
          ('Discriminator', 'num_fp16_res'): 0, ('Discriminator', 'conv_clamp'): None}
SG3_STYLEGAN2 = {('MappingNetwork', 'w_avg_beta'): 0.998}


def stand_in_source(module, overrides):
    """Class skeletons with our constructors' parameter lists; ``overrides[(class, arg)]`` replaces a default."""
    lines = ['import torch', '']
    for name, cls in vars(module).items():
        if not isinstance(cls, type):
            continue
        orig = cls.__mro__[1] if persistence.is_persistent(cls) else cls
        if orig.__module__ != module.__name__ or not issubclass(orig, object) or '__init__' not in vars(orig):
            continue
        params = []
        for p in list(inspect.signature(orig.__init__).parameters.values())[1:]:
            if p.kind == p.VAR_KEYWORD:
                params.append(f'**{p.name}')
            elif p.kind == p.VAR_POSITIONAL:
                params.append(f'*{p.name}')
            elif p.default is p.empty:
                params.append(p.name)
            else:
                default = overrides.get((name, p.name), p.default)
                text = repr(default)
                try:
                    ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    text = 'None'
                params.append(f'{p.name}={text}')
        lines += [f'class {name}(torch.nn.Module):', f'    def __init__(self, {", ".join(params)}):',
                  '        super().__init__()', '']
    return '\n'.join(lines)


def v6_pickle(nets, module_src):
    """``nets`` pickled as NVIDIA does, with every persistent object's embedded source replaced."""
    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not persistence.is_persistent(obj):
                return NotImplemented
            func, (meta,), *rest = obj.__reduce__()
            return (func, (dict(meta, module_src=module_src),), *rest)
    buf = io.BytesIO()
    Pickler(buf, protocol=4).dump(dict(nets, augment_pipe=None, training_set_kwargs=None))
    return buf.getvalue()


def bare_networks():
    G = networks_stylegan2.Generator(**BARE_G).eval()
    D = networks_stylegan2.Discriminator(**BARE_D).eval()
    assert G.synthesis.num_fp16_res == 4 and D.b16.conv0.conv_clamp == 256  # our defaults, for contrast
    return dict(G=G, D=D, G_ema=G)


def test_bare_stylegan2_ada_pickle_gets_its_trees_defaults():
    nets = bare_networks()
    src = stand_in_source(networks_stylegan2, SG2ADA)
    net = checkpoints.load_network_bytes(v6_pickle(nets, src), 'sg2ada.pkl', verbose=False)
    for G in (net.G, net.G_ema):
        assert G.init_kwargs.synthesis_kwargs['num_fp16_res'] == 0 and G.init_kwargs.synthesis_kwargs['conv_clamp'] is None
        assert G.synthesis.num_fp16_res == 0
        blocks = [getattr(G.synthesis, f'b{r}') for r in G.synthesis.block_resolutions]
        assert all(b.conv1.conv_clamp is None and not b.use_fp16 for b in blocks)
        assert G.mapping.w_avg_beta == 0.995  # sg2ada's mapping default equals ours: left alone
        assert 'w_avg_beta' not in G.init_kwargs.mapping_kwargs
    assert net.D.init_kwargs.num_fp16_res == 0 and net.D.init_kwargs.conv_clamp is None
    assert net.D.b16.conv0.conv_clamp is None and not net.D.b16.use_fp16
    # The weights are the file's, unchanged.
    for name, value in nets['G'].state_dict().items():
        assert (net.G_ema.state_dict()[name] == value).all(), name


def test_stylegan3_tree_mapping_gets_w_avg_beta_0998():
    nets = bare_networks()
    src = stand_in_source(networks_stylegan2, SG3_STYLEGAN2)
    net = checkpoints.load_network_bytes(v6_pickle(nets, src), 'sg3.pkl', verbose=False)
    assert net.G_ema.mapping.w_avg_beta == 0.998 and net.G_ema.init_kwargs.mapping_kwargs['w_avg_beta'] == 0.998
    assert net.G_ema.synthesis.num_fp16_res == 4  # stylegan3's StyleGAN2 synthesis defaults equal ours


def test_explicit_kwargs_win_over_tree_defaults():
    nets = bare_networks()
    G = networks_stylegan2.Generator(**dict(BARE_G, mapping_kwargs=dict(num_layers=2, w_avg_beta=0.9),
                                            synthesis_kwargs=dict(BARE_G['synthesis_kwargs'], conv_clamp=64))).eval()
    nets.update(G=G, G_ema=G)
    src = stand_in_source(networks_stylegan2, {**SG2ADA, **SG3_STYLEGAN2})
    net = checkpoints.load_network_bytes(v6_pickle(nets, src), 'explicit.pkl', verbose=False)
    kw = net.G_ema.init_kwargs
    assert kw.mapping_kwargs['w_avg_beta'] == 0.9 and kw.synthesis_kwargs['conv_clamp'] == 64
    assert kw.synthesis_kwargs['num_fp16_res'] == 0  # not given: the tree's default


def test_our_own_source_keeps_kwargs_as_stored():
    nets = bare_networks()
    net = checkpoints.load_network_bytes(pickle.dumps(dict(nets, training_set_kwargs=None)), 'ours.pkl', verbose=False)
    assert dict(net.G_ema.init_kwargs) == BARE_G and net.G_ema.synthesis.num_fp16_res == 4


@pytest.mark.parametrize('bad_src', ['def broken(:\n', ''])
def test_unparsable_source_changes_nothing(bad_src):
    from training.ckpt_nvidia import source_defaults
    assert source_defaults(bad_src) == {}
