"""Shared pieces of every family: types and the Inspector protocol, the family registry, checkpoints,
backbone, regions (post-processing), augmentation."""
