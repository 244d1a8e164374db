# Create .venv (if needed) and install the project with its pipeline and dev extras into it.
# Sourced by scripts/main.sh and scripts/test.sh from the repository root.
#
# The installer is uv (pinned below, itself installed by pip from PyPI): it resolves and unpacks in
# parallel and byte-compiles with every core, about 1 min here against about 3 min 15 s for pip
# (docs/findings.md §2e). AEGPO_INSTALLER=pip installs with pip alone. Either way the dependencies are
# constrained to requirements.lock, and an installed torch==2.13.0 build (CUDA, say) is kept.
AEGPO_UV_VERSION="0.13.9"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
case "${AEGPO_INSTALLER:-uv}" in
  uv)
    if ! .venv/bin/python -m uv --version 2>/dev/null | grep -q " $AEGPO_UV_VERSION\b"; then
      .venv/bin/python -m pip install -qq "uv==$AEGPO_UV_VERSION"  # -qq: not pip's index warnings
    fi
    # uv does not read pip's configuration: pass on pip's local wheel folders (find-links), where a machine may
    # keep wheels such as the CPU torch build that pip would take from there. Pip's index settings are not passed
    # on (uv takes the first index that has a package, pip the best version of all): behind a package mirror, set
    # UV_INDEX_URL, or use AEGPO_INSTALLER=pip.
    links=()
    for link in ${PIP_FIND_LINKS:-} $(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true); do
      links+=(--find-links "$link")
    done
    # Byte-code now: where PYTHONDONTWRITEBYTECODE=1 is set, nothing would ever write it, and every process
    # would compile torch & co. from source again.
    .venv/bin/python -m uv pip install -q --python .venv/bin/python --compile-bytecode "${links[@]}" \
      -c requirements.lock torch==2.13.0 -e '.[pipeline,dev]'
    ;;
  pip)
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c requirements.lock torch==2.13.0 -e '.[pipeline,dev]'
    ;;
  *)
    echo "AEGPO_INSTALLER=${AEGPO_INSTALLER}: expected uv or pip" >&2
    exit 2
    ;;
esac
