"""learn2learn.vision: benchmarks.get_tasksets, the few-shot models, the datasets fastmaml can
read (Omniglot; mini-ImageNet from learn2learn's cache files) and RandomClassRotation."""

from fastmaml.faces.compat.learn2learn.vision import benchmarks, datasets, models, transforms

__all__ = ["benchmarks", "datasets", "models", "transforms"]
