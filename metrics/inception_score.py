"""Inception score (Salimans et al. 2016) as stylegan2-ada-pytorch's ``is50k``.

Class probabilities come from NVIDIA's TorchScript Inception called with ``no_output_bias=True``
(softmax without the output bias, matching the original TensorFlow code). The generated set is cut
into 10 consecutive splits; each split scores ``exp(mean_x KL(p(y|x) || p(y)))`` with p(y) the
split's mean; the result is the mean and the (population) standard deviation over the splits.
"""
import numpy as np

IS_DETECTOR_KWARGS = dict(no_output_bias=True)


def inception_score_from_probs(probs, num_splits=10):
    """(mean, std) of the per-split scores of probabilities [N, num_classes]."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))
