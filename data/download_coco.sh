#!/usr/bin/env bash
# Download MS-COCO captions (and, unless --captions-only, images) into the official layout:
#
#   DEST/annotations/captions_train2014.json   captions_val2014.json     (year 2014)
#   DEST/train2014/*.jpg   DEST/val2014/*.jpg
#
# (2017: the same with train2017/val2017; also instances_*.json, the object categories.)
#
# Usage: data/download_coco.sh [--captions-only] {2014|2017} DEST
#
# Sizes: 2014 train 13 GB (82,783 images), val 6 GB (40,504); 2017 train 18 GB (118,287), val
# 1 GB (5,000); annotations about 250 MB. Downloads resume (curl -C - / wget -c) when run again; every
# archive is tested before it is unpacked. Needs curl or wget, and unzip. Not run by the tests.
set -euo pipefail

usage() { echo "usage: $0 [--captions-only] {2014|2017} DEST" >&2; exit 2; }
captions_only=0
if [ "${1:-}" = "--captions-only" ]; then captions_only=1; shift; fi
[ $# -eq 2 ] || usage
year=$1; dest=$2
case "$year" in 2014|2017) ;; *) echo "$0: error: year must be 2014 or 2017, not '$year'" >&2; exit 2 ;; esac
command -v unzip >/dev/null || { echo "$0: error: unzip is not installed" >&2; exit 2; }
if command -v curl >/dev/null; then
    fetch() { curl --fail --location --retry 3 -C - -o "$2" "$1"; }
elif command -v wget >/dev/null; then
    fetch() { wget --tries=3 -c -O "$2" "$1"; }
else
    echo "$0: error: neither curl nor wget is installed" >&2; exit 2
fi

base=http://images.cocodataset.org
archives=("annotations/annotations_trainval$year.zip")
[ "$captions_only" = 1 ] || archives+=("zips/train$year.zip" "zips/val$year.zip")

mkdir -p "$dest/downloads"
for archive in "${archives[@]}"; do
    zip="$dest/downloads/$(basename "$archive")"
    echo "== $base/$archive -> $zip"
    fetch "$base/$archive" "$zip"
    unzip -tq "$zip" >/dev/null || { echo "$0: error: $zip is damaged: delete it and run again" >&2; exit 1; }
    unzip -oq "$zip" -d "$dest"
done

for split in train val; do
    [ -f "$dest/annotations/captions_$split$year.json" ] \
        || { echo "$0: error: $dest/annotations/captions_$split$year.json is missing after unpacking" >&2; exit 1; }
done
echo "COCO $year is in $dest (archives in $dest/downloads can be deleted)."
echo "Try: python experiments/compare.py out/compare --coco $dest --split train$year"
