"""How far a text classifier can go on the image development set, independent of Stormwall.

Strong bag-of-n-grams baselines from scikit-learn, 5-fold stratified cross-validation on
image-prompts.jsonl, each scored at the issue's operating point: the threshold where under
2% of benign image prompts are predicted harmful. If these stop near Stormwall's figure,
the gap to the F1 target is in the labels, not in our model. Prints one JSON object.

Usage: bench/safety/ceiling.sh [DATA_DIR]   (sets up its own virtualenv)
"""

import collections
import json
import sys

import numpy as np
from scipy.sparse import hstack
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC

MAX_FPR = 0.02


def at_fpr(scores, y, max_fpr=MAX_FPR):
    """Precision, recall, F1 and FPR at the lowest threshold keeping FPR under max_fpr."""
    neg = np.sort(scores[y == 0])[::-1]
    allowed = int(np.ceil(max_fpr * len(neg))) - 1  # strictly under max_fpr
    t = neg[allowed] if allowed < len(neg) else -np.inf
    pred = scores > t
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(f1, 3),
            "fpr": round(fp / len(neg), 4)}, pred


def best_f1(scores, y):
    """The best F1 at any threshold (no false-positive cap)."""
    order = np.argsort(-scores)
    ys = y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    f1 = 2 * tp / (tp + fp + ys.sum())
    i = int(np.argmax(f1))
    return {"f1": round(float(f1[i]), 3), "fpr": round(float(fp[i] / (y == 0).sum()), 4)}


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/safety"
    recs = [json.loads(line) for line in open(f"{data}/image-prompts.jsonl") if line.strip()]
    texts = [r["text"].lower() for r in recs]
    y = np.array([1 if r["harmful"] else 0 for r in recs])
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(texts, y))
    models = {
        "tfidf_logistic": lambda: LogisticRegression(C=32, max_iter=3000, class_weight="balanced"),
        "tfidf_linear_svm": lambda: LinearSVC(C=1, class_weight="balanced"),
        "lsa256_mlp128": None,
    }
    scores = {name: np.zeros(len(y)) for name in models}
    for tr, te in folds:
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        tr_t = [texts[i] for i in tr]
        te_t = [texts[i] for i in te]
        x_tr = hstack([chars.fit_transform(tr_t), words.fit_transform(tr_t)]).tocsr()
        x_te = hstack([chars.transform(te_t), words.transform(te_t)]).tocsr()
        for name, make in models.items():
            if make is None:
                svd = TruncatedSVD(256, random_state=0).fit(x_tr)
                mlp = MLPClassifier((128,), alpha=1e-3, max_iter=300, random_state=0)
                mlp.fit(svd.transform(x_tr) * 5, y[tr])
                scores[name][te] = mlp.predict_proba(svd.transform(x_te) * 5)[:, 1]
            else:
                scores[name][te] = make().fit(x_tr, y[tr]).decision_function(x_te)
    report = {"records": len(y), "harmful": int(y.sum()), "max_fpr": MAX_FPR, "models": {}}
    for name, s in scores.items():
        point, pred = at_fpr(s, y)
        report["models"][name] = {"at_max_fpr": point, "best_f1_any_threshold": best_f1(s, y)}
        if name == "tfidf_logistic":
            # What the best baseline misses, by the dataset's own label and source.
            missed = collections.Counter()
            total = collections.Counter()
            for r, hit in zip(recs, pred):
                if r["harmful"]:
                    key = f'{r["source"]}: {", ".join(r.get("categories") or []) or "-"}'
                    total[key] += 1
                    missed[key] += 0 if hit else 1
            report["missed_by_label"] = {
                k: f"{missed[k]}/{total[k]}" for k, _ in total.most_common() if total[k] >= 10
            }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
