"""The models, plain ``nn.Module``s that import only torch: ``layers`` (the specification's building
blocks), ``base`` (what both share), ``butd`` (Bottom-Up Top-Down, product fusion) and ``film``.

    model = build_model("butd", ntoken=len(vocab), num_answers=len(label2ans), v_dim=2048)
    model.load_embeddings(glove)                      # np.float32 [ntoken, emb_dim]
    logits = model(features, spatials, tokens)        # [B, K, v_dim], [B, K, 6], [B, L] -> [B, A]

Given the same weights, ``BUTD`` computes exactly the specification's forward pass (its submodule
names are kept, so the two state dicts line up), with one repair: a bidirectional question encoder
yields ``2 * hidden`` features, and the attention and question projection are sized for that (the
specification sizes them ``hidden`` and fails). Features may arrive in the store's dtype (float16):
the models cast them to their own parameter dtype, which on a GPU is cheaper than in the loader.
The training loop lives in ``butd.training``.
"""
from __future__ import annotations

from butd.models.base import VQAModel
from butd.models.butd import BUTD
from butd.models.film import FiLM

MODELS = {"butd": BUTD, "film": FiLM}


def build_model(name: str, **kwargs) -> VQAModel:
    """``build_model('butd' | 'film', ntoken=..., num_answers=..., ...)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["BUTD", "FiLM", "MODELS", "VQAModel", "build_model"]
