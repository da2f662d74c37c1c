"""Independent reference code for VQA v2 answers, transcribed from its sources for parity tests.

Nothing on the training path imports it; ``butd.tasks.vqa_answers`` is the implementation the
tests hold against it. Three sources, each kept as its authors wrote it (Python 3 syntax only):

- annotated-butd (modular) ``src/preprocessing/vqa2/answers.py``, itself a Python 3 copy of
  hengyuan-hu's ``tools/compute_softscore.py``: the constants, ``process_punctuation``,
  ``process_digit_article``, ``preprocess_answer``, ``get_score``, ``filter_answers``,
  ``create_labels``, ``compute_target`` (its progress print dropped). The constants and both
  normalisation steps are, word for word, GT-Vision-Lab/VQA ``vqaEval.py``'s.
- GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` before a013f00 (2021), the
  body of ``VQAEval.evaluate`` for one question: ``evaluate_question_pre2021``.
- The same file at a013f00 ("Fixed processing answers bug", the current master):
  ``evaluate_question_master``.

The official evaluation takes ``gts[quesId]['answers']``, a list of ``{"answer", "answer_confidence",
"answer_id"}`` dicts, and ``res[quesId]['answer']``; it rewrites the answer dicts in place, so the
functions here work on a deep copy.
"""
import copy
import re

# CONSTANTS
CONTRACTIONS = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
                "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
                "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
                "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
                "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
                "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
                "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
                "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
                "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
                "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
                "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
                "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
                "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
                "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
                "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
                "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
                "somethingd've": "something'd've", "something'dve": "something'd've",
                "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
                "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
                "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
                "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
                "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
                "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
                "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
                "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
                "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
                "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
                "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
                "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
                "youve": "you've"}

MANUAL_MAP = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
              'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
ARTICLES = ['a', 'an', 'the']
PUNCT = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']

# (raw strings here: the same patterns, without Python 3.12's invalid-escape warning)
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def process_punctuation(inText):
    outText = inText
    for p in PUNCT:
        if (p + ' ' in inText or ' ' + p in inText) or (re.search(COMMA_STRIP, inText) != None):
            outText = outText.replace(p, '')
        else:
            outText = outText.replace(p, ' ')
    outText = PERIOD_STRIP.sub("", outText, re.UNICODE)
    return outText


def process_digit_article(inText):
    outText = []
    tempText = inText.lower().split()
    for word in tempText:
        word = MANUAL_MAP.setdefault(word, word)
        if word not in ARTICLES:
            outText.append(word)
        else:
            pass
    for wordId, word in enumerate(outText):
        if word in CONTRACTIONS:
            outText[wordId] = CONTRACTIONS[word]
    outText = ' '.join(outText)
    return outText


def preprocess_answer(answer):
    answer = process_digit_article(process_punctuation(answer))
    answer = answer.replace(',', '')
    return answer


def get_score(occurrences):
    if occurrences == 0:
        return 0
    elif occurrences == 1:
        return 0.3
    elif occurrences == 2:
        return 0.6
    elif occurrences == 3:
        return 0.9
    else:
        return 1


def filter_answers(answers, min_occurrences=9):
    """ Count the number of occurrences of each answer in the train/validation set """
    occurrence = {}
    for entry in answers:
        ground_truth = preprocess_answer(entry['multiple_choice_answer'])

        # Add Answer, Question ID to Occurrences
        if ground_truth not in occurrence:
            occurrence[ground_truth] = set()
        occurrence[ground_truth].add(entry['question_id'])

    # Iterate through Occurrences and Filter any Answers w/ Fewer than `min_occurrences` occurrences
    for ans in list(occurrence.keys()):
        if len(occurrence[ans]) < min_occurrences:
            occurrence.pop(ans)

    return occurrence


def create_labels(occurrence):
    """ Create Mappings between Answers and Label ID """
    ans2label, label2ans = {}, []
    for answer in occurrence:
        ans2label[answer] = len(ans2label)
        label2ans.append(answer)
    return ans2label, label2ans


def compute_target(answers, ans2label):
    """ Associate each example in the dataset with a soft distribution over answers """
    target = []
    for entry in answers:
        ans, ans_count = entry['answers'], {}
        for a in ans:
            a_ = a['answer']
            ans_count[a_] = ans_count.get(a_, 0) + 1

        labels, scores = [], []
        for a in ans_count:
            if a not in ans2label:
                continue
            labels.append(ans2label[a])
            scores.append(get_score(ans_count[a]))

        target.append({
            'question_id': entry['question_id'],
            'image_id': entry['image_id'],
            'labels': labels,
            'scores': scores
        })

    return target


def _vqa_eval_per_question(gt_answers, res_answer, body):
    gts = {0: {'answers': copy.deepcopy(list(gt_answers))}}
    return body(gts, 0, res_answer)


# ---- vqaEval.py before a013f00: VQAEval.evaluate, the loop body for one question -----------------

def _pre2021(gts, quesId, resAns):
    processPunctuation, processDigitArticle = process_punctuation, process_digit_article
    resAns      = resAns.replace('\n', ' ')
    resAns      = resAns.replace('\t', ' ')
    resAns      = resAns.strip()
    resAns      = processPunctuation(resAns)
    resAns      = processDigitArticle(resAns)
    gtAcc  = []
    gtAnswers = [ans['answer'] for ans in gts[quesId]['answers']]
    if len(set(gtAnswers)) > 1:
        for ansDic in gts[quesId]['answers']:
            ansDic['answer'] = processPunctuation(ansDic['answer'])
    for gtAnsDatum in gts[quesId]['answers']:
        otherGTAns = [item for item in gts[quesId]['answers'] if item!=gtAnsDatum]
        matchingAns = [item for item in otherGTAns if item['answer']==resAns]
        acc = min(1, float(len(matchingAns))/3)
        gtAcc.append(acc)
    avgGTAcc = float(sum(gtAcc))/len(gtAcc)
    return avgGTAcc


# ---- vqaEval.py at a013f00 (master) -------------------------------------------------------------

def _master(gts, quesId, resAns):
    processPunctuation, processDigitArticle = process_punctuation, process_digit_article
    for ansDic in gts[quesId]['answers']:
        ansDic['answer'] = ansDic['answer'].replace('\n', ' ')
        ansDic['answer'] = ansDic['answer'].replace('\t', ' ')
        ansDic['answer'] = ansDic['answer'].strip()
    resAns = resAns.replace('\n', ' ')
    resAns = resAns.replace('\t', ' ')
    resAns = resAns.strip()
    gtAcc = []
    gtAnswers = [ans['answer'] for ans in gts[quesId]['answers']]

    if len(set(gtAnswers)) > 1:
        for ansDic in gts[quesId]['answers']:
            ansDic['answer'] = processPunctuation(ansDic['answer'])
            ansDic['answer'] = processDigitArticle(ansDic['answer'])
        resAns = processPunctuation(resAns)
        resAns = processDigitArticle(resAns)

    for gtAnsDatum in gts[quesId]['answers']:
        otherGTAns = [item for item in gts[quesId]['answers'] if item!=gtAnsDatum]
        matchingAns = [item for item in otherGTAns if item['answer']==resAns]
        acc = min(1, float(len(matchingAns))/3)
        gtAcc.append(acc)
    avgGTAcc = float(sum(gtAcc))/len(gtAcc)
    return avgGTAcc


def evaluate_question_pre2021(gt_answers, res_answer):
    """The pre-2021 official accuracy of ``res_answer`` (str) against ``gt_answers`` (the
    annotation's list of answer dicts), in [0, 1] (vqaEval stores ``round(100 * acc, 2)``)."""
    return _vqa_eval_per_question(gt_answers, res_answer, _pre2021)


def evaluate_question_master(gt_answers, res_answer):
    """The same with the current (a013f00) rule."""
    return _vqa_eval_per_question(gt_answers, res_answer, _master)
