import json

import torch

from sae.model import SparseAutoencoder

from .conftest import make


def test_threshold_rule_with_and_without_b_dec(x, tmp_path):
    for apply in (True, False):
        sae = make("jumprelu", options={"apply_b_dec_to_input": apply}).eval()
        with torch.no_grad():
            sae.family.threshold.uniform_(0, 0.5)
        pre = (x - sae.b_dec if apply else x) @ sae.W_enc + sae.b_enc
        ref = torch.where(pre > sae.family.threshold, pre, torch.zeros_like(pre))
        torch.testing.assert_close(sae.encode_dense(x), ref)
        sae.save(tmp_path / str(apply))
        cfg = json.loads((tmp_path / str(apply) / "cfg.json").read_text())
        assert cfg["architecture"] == "jumprelu" and cfg["apply_b_dec_to_input"] is apply
        loaded = SparseAutoencoder.load(tmp_path / str(apply))
        torch.testing.assert_close(loaded.encode_dense(x), ref)
