"""Compatibility shim for code written against NVIDIA's ``conv2d_gradfix``.

NVIDIA's module replaced conv2d so that R1 could skip weight gradients on old PyTorch versions.
PyTorch's own double backward is correct (torch 2.x), so these are the plain functions and
``no_weight_gradients`` only remembers that it was asked.
"""
import contextlib

import torch

enabled = False                 # kept for code that toggles it; has no effect
weight_gradients_disabled = False


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return torch.nn.functional.conv_transpose2d(input, weight, bias, stride=stride, padding=padding,
                                                output_padding=output_padding, groups=groups, dilation=dilation)


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    global weight_gradients_disabled
    old = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = old
