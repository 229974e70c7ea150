"""defectstream models: pure PyTorch detectors, classifier, synthetic data, training and evaluation."""
