#!/bin/sh
# Puts a small real English corpus at $1 (default: distillery-data/datasets/corpora/fortunes.txt):
# ten of the collections in Debian's `fortunes` package (sayings, quotations and jokes; about
# 4,500 documents, 650 kB), one document per fortune, separated by `%` lines as the package
# has them, with the backspace overstriking of a few old fortunes removed. Installs the package
# with apt-get when /usr/share/games/fortunes is not there (root, or sudo).
set -eu
dest=${1:-distillery-data/datasets/corpora/fortunes.txt}
[ -s "$dest" ] && exit 0
src=/usr/share/games/fortunes
if [ ! -f "$src/wisdom" ]; then
    as_root=""
    if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq fortunes >/dev/null
fi
mkdir -p "$(dirname "$dest")"
for name in fortunes wisdom literature people science platitudes work education food love; do
    # Each collection ends with its last fortune; a `%` line keeps it apart from the next one.
    cat "$src/$name"
    printf '%%\n'
done | sed 's/.\x08//g' | tr -d '\000-\010\013-\037' >"$dest.partial"
mv "$dest.partial" "$dest"
echo "corpus of $(grep -c '^%$' "$dest") fortunes in $dest"
