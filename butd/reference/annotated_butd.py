"""The modular branch of annotated-butd's FiLM model (``src/models/film.py``), transcribed: the
independent reference the tests compare ``butd.models.FiLM`` against. Nothing on the training path
imports it.

Source: siddk/annotated-butd, branch ``modular`` @ 71043a885208aad4258b11375c6d1aa586956371.
Kept as written there: the construction order (so a seeded build draws the same initial weights),
the plain ``nn.Linear`` FiLM generators, the weight-normalised projection and classifier, and the
forward pass (``repeat`` of gamma and beta over the boxes, the indicator as a separate input for
NLVR2, the mean over boxes). Changed, and only these: the ``pl.LightningModule`` is an
``nn.Module`` holding the model alone (no data loaders, steps or optimiser); ``hparams`` and
``train_dataset`` become constructor arguments; the three per-dataset branches of ``build_model``,
which differ only in the image width (``v_dim + 6``, NLVR2 ``v_dim + 6 + 1``) and the number of
outputs (GQA ``len(ans2label)``, NLVR2 2, VQA v2 ``num_ans_candidates``), are one branch that
takes both; and torch 1.5's ``torch.nn.utils.weight_norm`` is torch 2's
``torch.nn.utils.parametrizations.weight_norm`` (the same ``g * v / ||v||``, initialised from the
same weight, with parameters named ``parametrizations.weight.original0/1``).
"""
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


class MLP(nn.Module):
    def __init__(self, dims, use_weight_norm=True):
        """ Simple utility class defining a fully connected network (multi-layer perceptron) """
        super(MLP, self).__init__()

        layers = []
        for i in range(len(dims) - 1):
            in_dim, out_dim = dims[i], dims[i + 1]
            if use_weight_norm:
                layers.append(weight_norm(nn.Linear(in_dim, out_dim), dim=None))
            else:
                layers.append(nn.Linear(in_dim, out_dim))
            layers.append(nn.ReLU())

        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        # [bsz, *, dims[0]] --> [bsz, *, dims[-1]]
        return self.mlp(x)


class WordEmbedding(nn.Module):
    def __init__(self, ntoken, dim, dropout=0.0):
        """ Initialize an Embedding Matrix with the appropriate dimensions --> Defines padding as last token in dict """
        super(WordEmbedding, self).__init__()
        self.ntoken, self.dim = ntoken, dim

        self.emb = nn.Embedding(ntoken + 1, dim, padding_idx=ntoken)
        self.dropout = nn.Dropout(dropout)

    def load_embeddings(self, weights):
        """ Set Embedding Weights from Numpy Array """
        assert weights.shape == (self.ntoken, self.dim)
        self.emb.weight.data[:self.ntoken] = torch.from_numpy(weights)

    def forward(self, x):
        # x : [bsz, seq_len] --> [bsz, seq_len, emb_dim]
        return self.dropout(self.emb(x))


class QuestionEncoder(nn.Module):
    def __init__(self, in_dim, hidden_dim, nlayers=1, bidirectional=False, dropout=0.0, rnn='GRU'):
        """ Initialize the RNN Question Encoder with the appropriate configuration """
        super(QuestionEncoder, self).__init__()
        self.in_dim, self.hidden, self.nlayers, self.bidirectional = in_dim, hidden_dim, nlayers, bidirectional
        self.rnn_type, self.rnn_cls = rnn, nn.GRU if rnn == 'GRU' else nn.LSTM

        # Initialize RNN
        self.rnn = self.rnn_cls(self.in_dim, self.hidden, self.nlayers, bidirectional=self.bidirectional,
                                dropout=dropout, batch_first=True)

    def forward(self, x):
        # x: [bsz, seq_len, emb_dim] --> ([bsz, seq_len, ndirections * hidden], [bsz, nlayers * ndirections, hidden])
        output, hidden = self.rnn(x)  # Note that Hidden Defaults to 0

        # If not Bidirectional --> Just Return last Output State
        if not self.bidirectional:
            # [bsz, hidden]
            return output[:, -1]

        # Otherwise, concat forward state for last element and backward state for first element
        else:
            # [bsz, 2 * hidden]
            f, b = output[:, -1, :self.hidden], output[:, 0, self.hidden:]
            return torch.cat([f, b], dim=1)


def image_dim(dataset, v_dim):
    """The width of a box's input in the modular branch: features and 6 spatials, and for NLVR2 the
    left/right indicator."""
    return v_dim + 6 + 1 if dataset == 'nlvr2' else v_dim + 6


class FiLM(nn.Module):
    def __init__(self, dataset, ntoken, v_dim, num_answers, emb_dim=300, emb_dropout=0.0, hidden=1024, rnn='GRU',
                 rnn_layers=1, bidirectional=False, q_dropout=0.0, answer_dropout=0.5, weight_norm=True):
        """``num_answers``: the branch's classifier width (GQA ``len(ans2label)``, NLVR2 2, VQA v2
        ``num_ans_candidates``)."""
        super(FiLM, self).__init__()
        self.dataset, self.use_weight_norm = dataset, weight_norm
        d = image_dim(dataset, v_dim)

        # Build Word Embeddings (for Questions)
        self.w_emb = WordEmbedding(ntoken=ntoken, dim=emb_dim, dropout=emb_dropout)

        # Build Question Encoder
        self.q_enc = QuestionEncoder(in_dim=emb_dim, hidden_dim=hidden, nlayers=rnn_layers,
                                     bidirectional=bidirectional, dropout=q_dropout, rnn=rnn)

        # Get FiLM Parameters
        self.film_gamma = nn.Linear(hidden, d)
        self.film_beta = nn.Linear(hidden, d)

        # Build Projection Networks
        self.img_project = MLP([d, hidden], use_weight_norm=weight_norm)

        # Build Answer Classifier
        self.ans_classifier = nn.Sequential(*[
            self._linear(hidden, 2 * hidden),
            nn.ReLU(),
            nn.Dropout(answer_dropout),
            self._linear(2 * hidden, num_answers)
        ])

    def _linear(self, in_dim, out_dim):
        # weight_norm(nn.Linear(...), dim=None) if self.hparams.weight_norm else nn.Linear(...)
        return weight_norm(nn.Linear(in_dim, out_dim), dim=None) if self.use_weight_norm \
            else nn.Linear(in_dim, out_dim)

    def forward(self, image_features, spatial_features, question_features, indicator_features=None):
        # image_features: [bsz, K, image_dim]
        # question_features: [bsz, seq_len]

        # Embed and Encode Question --> [bsz, q_hidden]
        w_emb = self.w_emb(question_features)
        q_enc = self.q_enc(w_emb)

        # Create new Image Features
        if indicator_features is not None:
            image_features = torch.cat([image_features, spatial_features, indicator_features], dim=2)
        else:
            image_features = torch.cat([image_features, spatial_features], dim=2)

        # Generate FiLM Parameters
        gamma = self.film_gamma(q_enc)
        beta = self.film_beta(q_enc)

        # Unsqueeze FiLM Parameters
        num_objs = image_features.size(1)
        gamma_proj = gamma.unsqueeze(1).repeat(1, num_objs, 1)
        beta_proj = beta.unsqueeze(1).repeat(1, num_objs, 1)

        # FiLMed Representation
        img_enc = ((image_features * gamma_proj) + beta_proj).mean(dim=1)

        # Project up and Classify
        img_repr = self.img_project(img_enc)

        # Compute and Return Logits
        return self.ans_classifier(img_repr)
