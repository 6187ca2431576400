#!/usr/bin/env bash
# The wheels the GPU machine's image lacks, for its Python 3.12 (x86-64 Linux), and this project's own
# wheel, in one ignored folder (default .whl/) that travels with the working tree (`carry`); there,
# benchmarks/gpu_check.sh installs them with `pip install --no-index --no-deps` on top of the image's
# packages, never replacing its torch. Prints the folder's size against the 64 MiB the tree and the
# carried folders may hold together, and fails past it.
#
#   bash benchmarks/gpu_wheels.sh [folder]
#   WITH_LM_EVAL=0 bash benchmarks/gpu_wheels.sh   # leave lm-eval out (the GPU run then sets eval.lm_eval.tasks=[])
#   WITH_TRL=0 bash benchmarks/gpu_wheels.sh       # leave TRL out (gpu_check then skips versus_trl)
#
# The lists: pyproject.toml's dependencies (and the bench extra's trl) with everything they pull in,
# less the packages the image has (/work/.library/device/KINDS.md, "Python packages already there"),
# pinned to the versions the test suite runs with here. Four have no wheel on PyPI, only a source
# archive of pure Python: they are built into py3-none-any wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=64

CORE=(
    hydra-core==1.3.8 omegaconf==2.3.1 vaderSentiment==3.3.2
    wandb==0.31.0 cwevals==0.0.1b1 platformdirs==4.14.9 distro==1.9.0 sniffio==1.3.1
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
    opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-http-transport==0.66b2
    opentelemetry-semantic-conventions==0.66b2 googleapis-common-protos==1.76.0
)
CORE_SOURCE=(antlr4-python3-runtime==4.9.3)
LM_EVAL=(
    lm-eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
    nltk==3.10.4 defusedxml==0.7.1 more-itertools==11.2.1 chardet==6.0.0.post1
    pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1
    tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
)
LM_EVAL_SOURCE=(rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1)
TRL=(trl==1.16.0)  # needs datasets (in LM_EVAL) and what the image has

wheels=("${CORE[@]}")
sources=("${CORE_SOURCE[@]}")
if [ "${WITH_LM_EVAL:-1}" = 1 ] || [ "${WITH_TRL:-1}" = 1 ]; then  # TRL needs datasets too
    wheels+=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
fi
if [ "${WITH_LM_EVAL:-1}" = 1 ]; then
    wheels+=("${LM_EVAL[@]}")
    sources+=("${LM_EVAL_SOURCE[@]}")
fi
if [ "${WITH_TRL:-1}" = 1 ]; then
    wheels+=("${TRL[@]}")
fi
mapfile -t wheels < <(printf '%s\n' "${wheels[@]}" | sort -u)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${wheels[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${sources[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" .  # rlhf-bench itself (conf/, sweeps/, published/ inside)

count=$(find "$DEST" -type f -name '*.whl' | wc -l)
wheel_bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
# what travels besides: tracked files and untracked ones git does not ignore (a deleted file counts 0)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'; true)
total=$((wheel_bytes + tree_bytes))
printf '%s: %d wheels, %.1f MiB; the tree %.1f MiB; together %.1f MiB of %d MiB\n' "$DEST" "$count" \
    "$(echo "$wheel_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "over the $LIMIT_MIB MiB carry limit: WITH_LM_EVAL=0 leaves lm-eval out" >&2
    exit 1
fi
