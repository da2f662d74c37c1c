"""Bottom-Up Top-Down with product fusion: the specification's model."""
from __future__ import annotations

from butd.models.base import VQAModel, box_mask
from butd.models.layers import MLP, Attention


class BUTD(VQAModel):
    """Bottom-Up Top-Down with product fusion (the specification's model): question-guided
    attention over the boxes, the attended image and the question projected and multiplied."""

    def build_fusion(self, q_dim, image_dim, hidden, attention_dropout, weight_norm):
        self.att = Attention(image_dim, q_dim, hidden, attention_dropout, weight_norm)
        self.q_project = MLP([q_dim, hidden], weight_norm)

    def forward(self, features, spatials, question_tokens, num_boxes=None):
        """features [B, K, v_dim], spatials [B, K, spatial_dim], question_tokens [B, L] -> logits
        [B, A]. ``num_boxes`` [B, I] (optional): real boxes per image; padding gets no attention."""
        v = self.image_inputs(features, spatials)
        q = self.encode_question(question_tokens)
        img_enc = (v * self.att(v, q, box_mask(num_boxes, v.shape[1]))).sum(dim=1)
        return self.ans_classifier(self.q_project(q) * self.img_project(img_enc))
