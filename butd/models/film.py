"""FiLM fusion: the question scales and shifts every box's features."""
from __future__ import annotations

from butd.models.base import VQAModel
from butd.models.layers import linear


class FiLM(VQAModel):
    """FiLM fusion (the specification's companion model): the question predicts a per-channel scale
    and shift for every box's features; the modulated boxes are averaged, projected and classified.
    There is no attention, so ``attention_dropout`` is accepted (same constructor) but unused."""

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        self.gamma = linear(q_dim, image_dim, weight_norm)
        self.beta = linear(q_dim, image_dim, weight_norm)

    def forward(self, features, spatials, question_tokens):
        """features [B, K, v_dim], spatials [B, K, spatial_dim], question_tokens [B, L] -> logits [B, A]."""
        v = self.image_inputs(features, spatials)
        q = self.encode_question(question_tokens)
        film = v * self.gamma(q).unsqueeze(1) + self.beta(q).unsqueeze(1)
        return self.ans_classifier(self.img_project(film.mean(dim=1)))
