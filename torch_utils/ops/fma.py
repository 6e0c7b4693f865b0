"""Fused multiply-add ``a * b + c`` (NVIDIA's ``fma`` call signature)."""
import torch


def fma(a, b, c):
    """Return ``a * b + c`` with broadcasting; differentiable to any order."""
    return torch.addcmul(c, a, b)
