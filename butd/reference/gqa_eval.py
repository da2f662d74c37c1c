"""GQA's official evaluation script (``eval.py`` from gqadataset.org), transcribed as a function: the
independent reference the tests hold ``evaluate.py``'s printed GQA figures against. Nothing on the
training or evaluation path imports it; ``butd.tasks.gqa_metrics`` is the implementation.

Source: the ``eval.py`` of gqadataset.org's evaluation download, as vendored in SHI-Labs/VCoder
``playground/data/eval/gqa/data/eval/eval.py`` (commit 2f95684), run there as ``python eval.py
--tier testdev --questions testdev_all_questions.json --consistency --grounding --objectFeatures``.
Transcribed rule by rule, in its order and with its names, and kept as the script has it:

- files are read by ``loadFile``: a JSON file, or else the chunks ``<stem>/<stem>_*.<ext>`` of a
  folder named after the file (its glob is relative to the working directory, as in the script);
- every figure is over the questions whose ``isBalanced`` is true, by exact string match of the
  prediction with ``answer``, times 100; ``open`` where ``types.structural == "query"``, ``binary``
  otherwise; an empty list averages to 0;
- validity / plausibility: the prediction is in ``choices[qid]["valid"]`` / ``["plausible"]``, where
  ``types.detailed`` contains ``Common`` the group ``["color", "material", "shape"]``; without a
  choices file both are 0 (the script's "Validity 0.00%" on testdev);
- consistency (``--consistency``): for each balanced question answered correctly whose ``entailed``
  list without its own id is not empty, the mean of (prediction == answer) over those questions;
- distribution: chi-square per ``groups.global`` (null groups skipped) of gold against predicted
  answer counts, weighted by each group's gold count, over the total, divided by 100;
- grounding (``--grounding``): the sum over the question's regions (the scene-graph boxes of the
  objects in ``annotations.question`` and ``annotations.fullAnswer``, divided by the image's width
  and height) and over the attention's cells of weight x (area of cell and region) / (area of cell);
- steps: the semantic operations whose ``"operation: argument"`` text contains none of ``exist``,
  ``query: name``, ``choose name``; words: ``len(question.split())``.

Two things are not as published, and both are documented here:

- **Fixed, so that it runs:** the object-attention branch (``--objectFeatures``) reads a variable
  ``cells`` that is never defined (a NameError on the first question). Here it reads the question's
  attention, as the file format documents it: ``[[x0, y0, x1, y1, weight], ...]``, one cell per box.
- **Kept as is:** the whole-image test ``any(("scene" in c) for c in question["semantic"])`` looks
  for the key ``"scene"`` in each semantic step, a dict with the keys ``operation``, ``dependencies``
  and ``argument``: it is never true, so the whole image is never added as a region.

Also changed: the command-line arguments are parameters, what the script prints is returned as a
list of lines beside the scores dict, and its progress bar, its advice lines and the helpers it
defines but never calls (``toSlice``, ``intsFromSlice``, ``wavg``; the first two cannot run under
Python 3) are left out.
"""
import glob
import json
import os.path
from collections import defaultdict


def gqa_eval(tier="val", scenes="{tier}_sceneGraphs.json", questions="{tier}_all_questions.json",
             choices="{tier}_choices.json", predictions="{tier}_predictions.json",
             attentions="{tier}_attentions.json", consistency=False, grounding=False, objectFeatures=False,
             mapSize=7):
    """``(printed lines, scores)`` of ``python eval.py`` with these arguments (file names may hold
    ``{tier}``). Raises as the script does: a missing prediction, question, choice or scene graph
    is an exception."""
    printed = []

    ##### Files Loading
    def loadFile(name):
        # a JSON file, or the chunks of a folder named after it
        if os.path.isfile(name):
            with open(name) as file:
                data = json.load(file)
        elif os.path.isdir(name.split(".")[0]):
            data = {}
            chunks = glob.glob('{dir}/{dir}_*.{ext}'.format(dir=name.split(".")[0], ext=name.split(".")[1]))
            for chunk in chunks:
                with open(chunk) as file:
                    data.update(json.load(file))
        else:
            raise Exception("Can't find {}".format(name))
        return data

    try:
        scenes_ = loadFile(scenes.format(tier=tier))
    except Exception:
        scenes_ = None   # testdev: no scene graphs
    questions_ = loadFile(questions.format(tier=tier))
    try:
        choices_ = loadFile(choices.format(tier=tier))
    except Exception:
        choices_ = None  # testdev: no choices
    predictions_ = loadFile(predictions.format(tier=tier))
    predictions_ = {p["questionId"]: p["prediction"] for p in predictions_}

    for qid in questions_:
        if (qid not in predictions_) and (consistency or questions_[qid]["isBalanced"]):
            raise Exception("missing predictions (no prediction for question {})".format(qid))

    attentions_ = None
    if grounding:
        with open(attentions.format(tier=tier)) as attentionsFile:
            attentions_ = json.load(attentionsFile)
            attentions_ = {a["questionId"]: a["attention"] for a in attentions_}

    ##### Scores data structures initialization
    def toScore(b):
        return float(1 if b else 0)

    def avg(values):
        if len(values) == 0:
            return 0
        return float(sum(values)) / len(values)

    scores = {
        "accuracy": [],
        "binary": [],
        "open": [],
        "validity": [],
        "plausibility": [],
        "consistency": [],
        "accuracyPerStructuralType": defaultdict(list),
        "accuracyPerSemanticType": defaultdict(list),
        "accuracyPerLength": defaultdict(list),
        "accuracyPerSteps": defaultdict(list),
        "grounding": [],
    }
    dist = {"gold": defaultdict(lambda: defaultdict(int)), "predicted": defaultdict(lambda: defaultdict(int))}

    ##### Question lengths: words number and reasoning steps number
    def getWordsNum(question):
        return len(question["question"].split())

    def getStepsNum(question):
        return len([c for c in question["semantic"]
                    if not any(o in "{}: {}".format(c["operation"], c["argument"])
                               for o in ["exist", "query: name", "choose name"])])

    ##### Validity and plausibility
    def belongs(element, group, question):
        if "Common" in question["types"]["detailed"]:
            group = ["color", "material", "shape"]
        return element in group

    ##### Consistency (entailed questions); reads the loop's `correct`, as the script's global
    def updateConsistency(questionId, question, questions):
        inferredQuestions = [eid for eid in question["entailed"] if eid != questionId]
        if correct and len(inferredQuestions) > 0:
            cosnsitencyScores = []
            for eid in inferredQuestions:
                gold = questions[eid]["answer"]
                predicted = predictions_[eid]
                cosnsitencyScores.append(toScore(predicted == gold))
            scores["consistency"].append(avg(cosnsitencyScores))

    ##### Grounding; boxes are c = (x0, y0, x1, y1), ranges r = (r0, r1)
    def yrange(c):
        return (c[1], c[3])

    def xrange(c):
        return (c[0], c[2])

    def length(r):
        if r is None:
            return 0
        return float(r[1] - r[0])

    def size(c):
        return length(xrange(c)) * length(yrange(c))

    def intersection(r1, r2):
        ir = (max(r1[0], r2[0]), min(r1[1], r2[1]))
        if ir[1] > ir[0]:
            return ir
        return None

    def intersectionSize(c1, c2):
        return length(intersection(xrange(c1), xrange(c2))) * length(intersection(yrange(c1), yrange(c2)))

    def intersectionRate(c1, c2):
        return float(intersectionSize(c1, c2)) / size(c1)

    def getCell(i, j):
        edge = float(1) / mapSize
        return (edge * i, edge * j, edge * (i + 1), edge * (j + 1))

    def getRegion(sceneGraph, objectId):
        obj = sceneGraph["objects"][objectId]
        x0 = float(obj["x"]) / sceneGraph["width"]
        y0 = float(obj["y"]) / sceneGraph["height"]
        x1 = float(obj["x"] + obj["w"]) / sceneGraph["width"]
        y1 = float(obj["y"] + obj["h"]) / sceneGraph["height"]
        return (x0, y0, x1, y1)

    def computeGroundingScore(question, sceneGraph, attentionMap):
        regions = []
        regions += [getRegion(sceneGraph, pointer) for pointer in question["annotations"]["question"].values()]
        regions += [getRegion(sceneGraph, pointer) for pointer in question["annotations"]["fullAnswer"].values()]
        # kept: a semantic step is a dict without a "scene" key, so this never adds the whole image
        if any(("scene" in c) for c in question["semantic"]):
            regions.append((0, 0, 1, 1))
        if objectFeatures:
            # fixed: the script reads an undefined `cells` here; the attention is the list of cells
            cells = [((x0, y0, x1, y1), attention) for x0, y0, x1, y1, attention in attentionMap]
        else:
            cells = [(getCell(i, j), attentionMap[i][j]) for i in range(mapSize) for j in range(mapSize)]
        scores_ = []
        for region in regions:
            for cell, attention in cells:
                scores_.append(attention * intersectionRate(cell, region))
        return sum(scores_)

    ##### Distribution
    def chiSquare(goldDist, predictedDist):
        sumScore, sumOverall = 0, 0
        for group in goldDist:
            score, overall = 0, 0
            for ans in goldDist[group]:
                e = goldDist[group][ans]
                o = predictedDist[group].get(ans, 0)
                score += ((float(o - e) ** 2) / e)
                overall += goldDist[group][ans]
            sumScore += score * overall
            sumOverall += overall
        avgScore = float(sumScore) / sumOverall
        return avgScore

    ##### Main score computation
    for qid, question in questions_.items():
        if question["isBalanced"]:
            gold = question["answer"]
            predicted = predictions_[qid]
            correct = (predicted == gold)
            score = toScore(correct)

            wordsNum = getWordsNum(question)
            stepsNum = getStepsNum(question)

            scores["accuracy"].append(score)
            scores["accuracyPerLength"][wordsNum].append(score)
            scores["accuracyPerSteps"][stepsNum].append(score)
            scores["accuracyPerStructuralType"][question["types"]["structural"]].append(score)
            scores["accuracyPerSemanticType"][question["types"]["semantic"]].append(score)
            answerType = "open" if question["types"]["structural"] == "query" else "binary"
            scores[answerType].append(score)

            valid = belongs(predicted, choices_[qid]["valid"], question) if choices_ else False
            scores["validity"].append(toScore(valid))
            plausible = belongs(predicted, choices_[qid]["plausible"], question) if choices_ else False
            scores["plausibility"].append(toScore(plausible))

            if attentions_ is not None:
                groundingScore = computeGroundingScore(question, scenes_[question["imageId"]], attentions_[qid])
                if groundingScore is not None:
                    scores["grounding"].append(groundingScore)

            globalGroup = question["groups"]["global"]
            if globalGroup is not None:
                dist["gold"][globalGroup][gold] += 1
                dist["predicted"][globalGroup][predicted] += 1

            if consistency:
                updateConsistency(qid, question, questions_)

    scores["distribution"] = chiSquare(dist["gold"], dist["predicted"]) / 100

    metrics = ["binary", "open", "accuracy", "consistency", "validity", "plausibility", "grounding", "distribution"]
    detailedMetrics = [("accuracyPerStructuralType", "Accuracy / structural type"),
                       ("accuracyPerSemanticType", "Accuracy / semantic type"),
                       ("accuracyPerSteps", "Accuracy / steps number"),
                       ("accuracyPerLength", "Accuracy / words number")]

    for k in metrics:
        if isinstance(scores[k], list):
            scores[k] = avg(scores[k]) * 100
    for k, _ in detailedMetrics:
        for t in scores[k]:
            scores[k][t] = avg(scores[k][t]) * 100, len(scores[k][t])

    printed.append("")
    for m in metrics:
        if m == "grounding" and not grounding:
            continue
        if m == "consistency" and not consistency:
            continue
        printed.append("{title}: {score:.2f}{suffix}".format(
            title=m.capitalize(), score=scores[m], suffix=" (lower is better)" if m == "distribution" else "%"))
    for m, mPrintName in detailedMetrics:
        printed.append("")
        printed.append("{}:".format(mPrintName))
        # (the script's sub-metric renaming tests a leftover loop variable that is never a list:
        # the type names are printed as they are)
        for t in sorted(list(scores[m].keys())):
            printed.append("  {title}: {score:.2f}{suffix} ({amount} questions)".format(
                title=t, score=scores[m][t][0], suffix="%", amount=scores[m][t][1]))
    return printed, scores
