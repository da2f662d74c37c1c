"""lil-lab's NLVR2 evaluation script (``nlvr2/eval/metrics.py``), transcribed as a function: the
independent reference the tests compare the NLVR2 task's printed scores against. Nothing on the
training path imports it.

Source: lil-lab/nlvr, master @ 18924841aa96, run there as ``python eval/metrics.py PRED.csv
data/EVAL_SPLIT.json``. Kept as written: how the predictions CSV and the JSON-lines labels are read,
the accuracy and the consistency (a sentence counts when every pair it is stated about is right;
its group is the identifier with the pair id blanked). Changed: the two paths are arguments instead
of ``sys.argv``, and what the script prints is returned as a list of lines (``exit()`` after the
missing-predictions report becomes a ``return``).
"""
import json


def nlvr2_metrics(predictions_path, labels_path):
    """The lines ``python eval/metrics.py predictions_path labels_path`` prints."""
    printed = []

    # Load the predictions file. Assume it is a CSV.
    predictions = { }
    for line in open(predictions_path).readlines():
        if line:
            splits = line.strip().split(",")
            # We assume identifiers are in the format "split-####-#-#.png".
            identifier = splits[0]
            prediction = splits[1]
            predictions[identifier] = prediction

    # Load the labeled examples.
    labeled_examples = [json.loads(line) for line in open(labels_path).readlines() if line]

    # If not, identify the ones that are missing, and exit.
    total_num = len(labeled_examples)
    if len(predictions) < total_num:
        printed.append("Some predictions are missing!")
        printed.append("Got " + str(len(predictions)) + " predictions but expected " + str(total_num))

        for example in labeled_examples:
            lookup = example["identifier"]
            if not lookup in predictions:
                printed.append("Missing prediction for item " + str(lookup))
        return printed

    # Get the precision by iterating through the examples and checking the value
    # that was predicted.
    # Also update the "consistency" dictionary that keeps track of whether all
    # predictions for a given sentence were correct.
    num_correct = 0.
    consistency_dict = { }

    for example in labeled_examples:
        anon_label = example["identifier"].split("-")
        anon_label[2] = ''
        anon_label = '-'.join(anon_label)
        if not anon_label in consistency_dict:
            consistency_dict[anon_label] = True
        lookup = example["identifier"]
        prediction = predictions[lookup]
        if prediction.lower() == example["label"].lower():
            num_correct += 1.
        else:
            consistency_dict[anon_label] = False

    # Calculate consistency.
    num_consistent = 0.
    unique_sentence = len(consistency_dict)
    for identifier, consistent in consistency_dict.items():
        if consistent:
            num_consistent += 1

    # Report values.
    printed.append("accuracy=" + str(num_correct / total_num))
    printed.append("consistency=" + str(num_consistent / unique_sentence))
    return printed
