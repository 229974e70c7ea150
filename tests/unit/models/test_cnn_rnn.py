"""The CNN+RNN classifier: a bidirectional GRU over the rows of the Lite0 feature map."""
from __future__ import annotations

import torch

from models.families.cnn_rnn import example
from models.families.cnn_rnn.model import CnnRnn
from models.loading import load_inspector, model_files


def test_the_gru_reads_one_step_per_row_of_the_feature_map():
    net = CnnRnn(6, hidden=16).eval()
    seen = []
    net.rnn.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        assert net(torch.randn(2, 3, 128, 64)).shape == (2, 6)
        assert net(torch.randn(1, 3, 64, 224)).shape == (1, 6)
    assert seen == [(2, 4, 16), (1, 2, 16)]  # (batch, rows = H / 32, hidden)


def test_its_directory_is_its_own_family_not_the_image_classifier(tmp_path):
    d = example.tiny_model(tmp_path / "m")
    assert model_files(d).family == "cnn-rnn"
    insp = load_inspector(d, device="cpu")
    assert insp.family == "cnn-rnn" and insp.model_version.startswith("cnn-rnn-lite0-bigru-rows-")
    assert set(insp.networks()) == {"cnn-rnn"}
