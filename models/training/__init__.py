"""Training pieces shared by the families (the Lite0 trainer, resume, progress, early stopping, AUROC)."""
