"""Compatibility shim for code written against NVIDIA's ``grid_sample_gradfix``.

``F.grid_sample`` supports double backward in torch 2.x, so this is the plain function with the
settings NVIDIA's augmentation pipeline used.
"""
import torch

enabled = False  # kept for code that toggles it; has no effect


def grid_sample(input, grid):
    return torch.nn.functional.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)
