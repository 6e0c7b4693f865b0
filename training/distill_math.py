"""The mathematics of the distillation terms, as plain functions (method-svs-distillation.md §2).

Kept apart from the loss-term classes in ``training/distill.py`` so that each formula can be tested
against an independent computation on small tensors.
"""
import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# Latent directions (SeFa-style) for the latent-direction relation loss.

def top_eigvecs_of_affines(affine_weights, k=5):
    """Top-``k`` eigenvectors of A·Aᵀ, A = [w_dim, M] the row-normalised affine weights stacked.

    ``affine_weights``: list of raw affine weights [C_i, w_dim] (gains do not matter after the
    normalisation). Returns [k, w_dim] float32, sorted by decreasing eigenvalue. The official code
    uses ``numpy.linalg.eig`` and assumes sorted output; a symmetric solver with an explicit sort is
    what it meant.
    """
    rows = torch.cat([w.detach().to(torch.float64).cpu() for w in affine_weights], dim=0)  # [M, w_dim]
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram = rows.T @ rows                                       # [w_dim, w_dim] = A·Aᵀ
    eigvals, eigvecs = torch.linalg.eigh(gram)                 # ascending
    order = torch.argsort(eigvals, descending=True)[:k]
    return eigvecs[:, order].T.contiguous().to(torch.float32)  # [k, w_dim]


def sg2_direction_bank(G_teacher, max_block_res, k=5):
    """Directions from the teacher's blocks 8 .. ``max_block_res``: conv0 and conv1 affines pooled.

    Returns [num_blocks * k, w_dim] (25 directions for the 256 px recipe: blocks 8..128).
    """
    synthesis = G_teacher.synthesis
    bank = []
    for res in synthesis.block_resolutions:
        if res < 8 or res > max_block_res:
            continue
        block = getattr(synthesis, f'b{res}')
        bank.append(top_eigvecs_of_affines([block.conv0.affine.weight, block.conv1.affine.weight], k=k))
    if not bank:
        raise ValueError(f'no synthesis block between 8 and {max_block_res} px for the direction bank')
    return torch.cat(bank, dim=0)


def sg3_direction_bank(G_teacher, layer_indices, k=5):
    """Directions per LD layer of a StyleGAN3 teacher (each layer's own affine): 20 for 4 layers."""
    synthesis = G_teacher.synthesis
    bank = []
    for idx in layer_indices:
        layer = getattr(synthesis, synthesis.layer_names[idx])
        bank.append(top_eigvecs_of_affines([layer.affine.weight], k=k))
    return torch.cat(bank, dim=0)


def latent_offsets(bank, batch_size, strength=5.0, generator=None):
    """δ = strength · ε · d̂ per sample: d a uniformly drawn bank direction, ε ~ N(0, 1)."""
    idx = torch.randint(bank.shape[0], [batch_size], generator=generator, device=bank.device)
    eps = torch.randn([batch_size], generator=generator, device=bank.device)
    unit = bank[idx] / bank[idx].norm(dim=1, keepdim=True)
    return strength * eps[:, None] * unit                      # [B, w_dim]


# ---------------------------------------------------------------------------------------------
# Loss formulas.

def relation_kl(feat_student, feat_teacher):
    """KL(P‖Q) ('batchmean') between row softmaxes of cross-view cosine matrices, for one layer.

    ``feat_*``: [2B, ...] activations; rows 0..B-1 are the original samples, rows B..2B-1 the same
    samples moved by their latent offsets. Features are cast to float32 first, so fp16 activations
    (mixed precision) cannot overflow the norms of vectors with millions of entries.
    """
    def relation(feat):
        feat = feat.flatten(1).to(torch.float32)
        half = feat.shape[0] // 2
        orig = F.normalize(feat[:half], dim=1)
        moved = F.normalize(feat[half:], dim=1)
        return orig @ moved.T                                  # [B, B] cosines
    log_q = F.log_softmax(relation(feat_student), dim=1)
    log_p = F.log_softmax(relation(feat_teacher), dim=1)
    return F.kl_div(log_q, log_p, reduction='batchmean', log_target=True)


def masked_l1(img_student, img_teacher, mask=None):
    """Mean over every entry (masked-out pixels count as zeros) of |x_T·m − x_S·m|."""
    if mask is None:
        return (img_teacher - img_student).abs().mean()
    return (img_teacher * mask - img_student * mask).abs().mean()


def downsample_for_lpips(img, size=256, mode='avgpool'):
    """Images larger than ``size`` are reduced to it before LPIPS (avg-pool for SG2, bilinear for SG3)."""
    if img.shape[-1] <= size:
        return img
    if mode == 'avgpool':
        factor = img.shape[-1] // size
        return F.avg_pool2d(img, kernel_size=factor, stride=factor)
    return F.interpolate(img, size=(size, size), mode='bilinear', align_corners=False)


def style_l1(styles):
    """GAN-Slimming sparsity penalty: Σ_layers ‖mean_batch(s_layer)‖₁."""
    return sum(s.mean(dim=0).abs().sum() for s in styles)
