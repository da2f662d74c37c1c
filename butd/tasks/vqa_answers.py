"""VQA v2 answers: the official normalisation, the candidate answers, soft training targets and the
official VQA accuracy of one prediction.

    normalize_answer("Two dogs.")                     # '2 dogs'
    soft_targets(["net"] * 6 + ["Net"] * 2 + ["mesh"] * 2, {"net": 0, "mesh": 1})   # ([0, 1], [1.0, 0.6])
    vqa_accuracy("2", ["two"] * 3 + ["2"] * 7)        # 1.0

Sources, all read from their code (copies in ``butd.reference.vqa_eval``):

- Normalisation: GT-Vision-Lab/VQA ``vqaEval.py`` (``processPunctuation``, ``processDigitArticle``),
  as hengyuan-hu's ``tools/compute_softscore.py`` and annotated-butd's
  ``src/preprocessing/vqa2/answers.py`` copy it; ``normalize_answer`` is their ``preprocess_answer``
  (both steps, then commas dropped). Quirks kept: any ``digit,digit`` in an answer deletes every
  punctuation mark instead of spacing it; the period rule's malformed look-behind lets it delete
  every '.' not followed by a digit, and at most 32 of them (``re.UNICODE`` passed as the count).
- Candidates: the normalised ``multiple_choice_answer`` of train+val questions, kept when at least
  ``min_count`` (9) questions have it, in order of first appearance (compute_softscore's
  ``filter_answers``; 3,129 answers on the full data).
- Soft targets: 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ matching human answers (``get_score``).
  Unlike compute_softscore's ``__main__`` and annotated-butd, which count the *raw* human answers
  against the normalised candidates (so "Yes" or "two" earn nothing, hengyuan-hu#40), every human
  answer is normalised before counting, as compute_softscore's own docstring asks.
- Accuracy: the official rule of the **pre-2021** ``vqaEval.py`` (the parent of GT-Vision-Lab/VQA
  a013f00, and the 2017 ``feature/update_style`` branch), the one the VQA v2 papers and the
  challenge server of those years used: the prediction (newlines and tabs made spaces, stripped)
  gets both normalisation steps; the human answers get ``process_punctuation`` only, and only when
  they are not all identical; the score is the mean over the leave-one-out subsets of the human
  answers of ``min(1, matches / 3)``. The current master (a013f00, 2021, "Fixed processing answers
  bug") instead strips the human answers too, and normalises both the human answers and the
  prediction with *both* steps when the human answers are not all identical, and neither when they
  are. They differ, for example, on "2" against seven "two" and three "2": 0.9 here (punctuation
  alone leaves "two"), 1.0 under master; and on "Two" against ten "2": 1.0 here (the prediction is
  always normalised), 0.0 under master. Both give 0.0 to "2" against ten "two".
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(("a", "an", "the"))
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern, malformed look-behind included: "(?!<=\d)" is a look-ahead that always holds.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval passes re.UNICODE (32) where sub() takes its count.
PERIOD_STRIP_COUNT = int(re.UNICODE)

NUM_HUMAN_ANSWERS = 10
MIN_ANSWER_COUNT = 9
# Soft target of a candidate matched by 0, 1, 2, 3, 4+ of the ten human answers (get_score).
SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)
MAX_LABELS = NUM_HUMAN_ANSWERS


@lru_cache(maxsize=1 << 20)
def process_punctuation(text: str) -> str:
    """vqaEval's ``processPunctuation``: each mark deleted where it touches a space in the answer
    (or everywhere when the answer holds digit,digit), else replaced by a space; then periods."""
    strip_all = COMMA_STRIP.search(text) is not None
    out = text
    for p in PUNCT:
        # the tests look at the original text, the replacements act on the running one
        out = out.replace(p, "" if strip_all or (p + " " in text or " " + p in text) else " ")
    return PERIOD_STRIP.sub("", out, PERIOD_STRIP_COUNT)


@lru_cache(maxsize=1 << 20)
def process_digit_article(text: str) -> str:
    """vqaEval's ``processDigitArticle``: lower-case, number words to digits, articles dropped,
    contractions restored (the capitalised keys such as "Im" can never match after lower())."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


@lru_cache(maxsize=1 << 20)
def normalize_answer(answer: str) -> str:
    """compute_softscore's ``preprocess_answer``: punctuation, digits/articles/contractions, and
    no commas. The form of candidate answers and of the human answers counted for soft targets."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")


def soft_score(matches: int) -> float:
    """get_score: 0, 0.3, 0.6, 0.9 for 0-3 matching human answers, 1.0 for 4 or more (equal to the
    official leave-one-out accuracy of an answer that 0-10 of ten human answers gave)."""
    return SOFT_SCORES[min(matches, len(SOFT_SCORES) - 1)]


def majority_answer(human_answers: Sequence[str]) -> str:
    """The most frequent normalised human answer (the first of equals): the official definition of
    ``multiple_choice_answer``, for annotation files that leave it out."""
    return Counter(map(normalize_answer, human_answers)).most_common(1)[0][0]


def candidate_answers(multiple_choice_answers: Iterable[str], min_count: int = MIN_ANSWER_COUNT
                      ) -> Tuple[Dict[str, int], List[str]]:
    """(ans2label, label2ans): the normalised answers that at least ``min_count`` questions give
    as their ``multiple_choice_answer`` (one per question), in order of first appearance."""
    counts = Counter(map(normalize_answer, multiple_choice_answers))
    label2ans = [a for a, n in counts.items() if n >= min_count]
    return {a: i for i, a in enumerate(label2ans)}, label2ans


def soft_targets(human_answers: Sequence[str], ans2label: Dict[str, int]) -> Tuple[List[int], List[float]]:
    """(labels, scores) of the candidates among the normalised human answers, in order of first
    mention: ``soft_score`` of how many human answers normalise to each."""
    counts = Counter(map(normalize_answer, human_answers))
    labels = [ans2label[a] for a in counts if a in ans2label]
    return labels, [soft_score(counts[a]) for a in counts if a in ans2label]


# -- the official accuracy (pre-2021 vqaEval.py) ------------------------------------------------

def official_prediction(answer: str) -> str:
    """A predicted answer as the official evaluation compares it: newlines and tabs made spaces,
    stripped, then both normalisation steps."""
    return process_digit_article(process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def official_human_answers(human_answers: Sequence[str]) -> List[str]:
    """The human answers as the official evaluation compares them: ``process_punctuation`` when
    they are not all identical, untouched (not even stripped) when they are."""
    if len(set(human_answers)) > 1:
        return [process_punctuation(a) for a in human_answers]
    return list(human_answers)


def leave_one_out_accuracy(matches, num_answers: int = NUM_HUMAN_ANSWERS):
    """The official score of a prediction that ``matches`` of ``num_answers`` human answers equal:
    the mean over the subsets that leave one human answer out of ``min(1, matches in it / 3)``.
    Works on ints and on numpy arrays of ints (float64 out)."""
    m = np.asarray(matches, dtype=np.float64)
    hit = np.minimum(1.0, np.maximum(m - 1, 0) / 3)      # a subset that left out a matching answer
    miss = np.minimum(1.0, m / 3)                         # one that left out another answer
    return (m * hit + (num_answers - m) * miss) / num_answers


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one predicted answer string against its human answers (the
    pre-2021 rule above), in [0, 1]."""
    predicted = official_prediction(prediction)
    matches = sum(a == predicted for a in official_human_answers(human_answers))
    return float(leave_one_out_accuracy(matches, len(human_answers)))


def official_matches(human_answers: Sequence[str], labels_of: Dict[str, List[int]]) -> List[Tuple[int, int]]:
    """(candidate label, matching human answers) for every candidate whose official form
    (``labels_of``: ``official_prediction(label2ans[i]) -> [i, ...]``) some human answer equals:
    what the official accuracy of any predicted candidate needs, at most a few pairs per question."""
    counts = Counter(official_human_answers(human_answers))
    return [(label, n) for answer, n in counts.items() for label in labels_of.get(answer, ())]


def official_forms(label2ans: Sequence[str]) -> Dict[str, List[int]]:
    """``official_prediction`` of each candidate -> the candidate labels with that form."""
    forms: Dict[str, List[int]] = {}
    for i, answer in enumerate(label2ans):
        forms.setdefault(official_prediction(answer), []).append(i)
    return forms
