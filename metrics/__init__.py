"""Sample-quality metrics: FID, KID, P&R (stylegan2-ada pr50k3) and P/R/D/C (Naeem et al.).

Modules: ``detectors`` (NVIDIA's TorchScript Inception / VGG16), ``features`` (sharded extraction,
on-disk cache), ``frechet`` (FID, KID), ``knn`` (one tiled k-NN engine for P/R/D/C),
``metric_main`` (registry, ``calc_metric``, ``report_metric``), ``plot_curves`` (metric vs kimg).
"""
