"""Shared pieces of every family: typed results and the Inspector protocol, the family registry, checkpoints, backbone, regions, augmentation."""
