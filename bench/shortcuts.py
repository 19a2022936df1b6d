"""Shortcut probe of the message generator: can the label be read off what should not carry it?

Generates the demo's messages (``--n``, ``--seed``; no label noise) and fits logistic regressions
on a stratified 80/20 split, each against the majority-class rate:

- ``edges``: TF-IDF over the first and the last three words only (openers, closers, the frame
  of a template);
- ``surface``: features that say nothing about sentiment: a question mark (anywhere, at the
  end), an exclamation mark, the number of words and sentences, digits, an e-mail address, a
  greeting at the start, a closer at the end;
- ``tfidf``: the whole text (the pipeline's TF-IDF baseline, `tasks.classifier.common`).

``scaffold``: for words and marks that are neutral in every class of real support mail
(greetings, thanks, "question", "?"), the largest lift ``P(label | present) / P(label)`` and
the label it favours. ``giveaways``: the n-grams (1 to 3 words, in at least 1 % of messages)
whose messages are 95 % or more one label, most frequent first: sentiment words belong there;
frames, greetings and slots do not. Prints one JSON object; ``--save`` keeps it as
``bench/results/shortcuts.json``.

    .venv/bin/python -m bench.shortcuts --save
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import numpy as np
import pandas as pd

from bench.common import emit, machine
from tasks.classifier.common import tfidf_baseline
from tasks.support import synthetic

GREETING = re.compile(r"^\W*(hi|hello|hey|good (morning|afternoon|evening)|dear|to whom)\b", re.IGNORECASE)
CLOSER = re.compile(r"\b(thanks|thank you|regards|cheers|best,|sent from my)\W*\w*\W*$", re.IGNORECASE)
SCAFFOLD = ("hi", "hello", "hey", "dear", "morning", "thanks", "thank", "regards", "cheers", "please",
            "question", "quick", "wondering", "?", "!")  # fmt: skip
WORDS = re.compile(r"\w+|[?!]")


def edges(text: str, n: int = 3) -> str:
    words = WORDS.findall(text.lower())
    return " ".join([*words[:n], "|", *words[-n:]])


def surface(text: str) -> list[float]:
    return [
        float("?" in text), float(text.rstrip().endswith("?")), float("!" in text),
        min(len(text.split()), 80) / 80, min(len(re.findall(r"[.!?](\s|$)", text)), 8) / 8,
        float(bool(re.search(r"\d", text))), float("@" in text),
        float(bool(GREETING.search(text))), float(bool(CLOSER.search(text))),
    ]  # fmt: skip


def accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, C=10.0).fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def probe(frame: pd.DataFrame, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=seed)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"[^ ]+")
    edges_train = vectorizer.fit_transform(train["text"].map(edges))
    edges_test = vectorizer.transform(test["text"].map(edges))
    surface_train = np.array([surface(t) for t in train["text"]])
    surface_test = np.array([surface(t) for t in test["text"]])
    return {
        "majority": float(test["label"].value_counts(normalize=True).iloc[0]),
        "edges": accuracy(edges_train, train["label"], edges_test, test["label"]),
        "surface": accuracy(surface_train, train["label"], surface_test, test["label"]),
        "tfidf": tfidf_baseline(train, test)["accuracy"],
    }


def grams(text: str, longest: int = 3) -> set[str]:
    words = WORDS.findall(text.lower())
    return {" ".join(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)}


def lifts(frame: pd.DataFrame) -> tuple[dict, list]:
    base = frame["label"].value_counts(normalize=True)
    sets = frame["text"].map(grams)
    counts: Counter = Counter(g for s in sets for g in s)
    by_label = {label: Counter(g for s in sets[frame["label"] == label] for g in s) for label in base.index}

    def share(gram: str) -> pd.Series:
        return pd.Series({label: by_label[label][gram] / counts[gram] for label in base.index})

    scaffold = {}
    for gram in SCAFFOLD:
        if counts[gram]:
            lift = share(gram) / base
            scaffold[gram] = {
                "messages": counts[gram],
                "label": lift.idxmax(),
                "lift": round(float(lift.max()), 2),
            }
    minimum = 0.01 * len(frame)
    giveaways = []
    for gram, count in counts.most_common():
        if count < minimum:
            break
        shares = share(gram)
        if shares.max() >= 0.95:
            giveaways.append(
                {
                    "ngram": gram,
                    "messages": count,
                    "label": shares.idxmax(),
                    "share": round(float(shares.max()), 3),
                }
            )
    return scaffold, giveaways[:30]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save", action="store_true", help="also write bench/results/shortcuts.json")
    args = parser.parse_args()
    frame = pd.DataFrame(synthetic.generate(args.n, args.seed))
    scaffold, giveaways = lifts(frame)
    report = {
        "machine": machine(),
        "messages": args.n,
        "seed": args.seed,
        "probe_accuracy": probe(frame, args.seed),
        "scaffold": scaffold,
        "giveaways": giveaways,
    }
    emit("shortcuts", report, args.save)


if __name__ == "__main__":
    main()
