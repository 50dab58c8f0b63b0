#!/usr/bin/env bash
# Build eqcore's extension with AddressSanitizer + UndefinedBehaviorSanitizer (the CMake option
# EQCORE_SANITIZE) into a throwaway virtualenv, then run the test suite against that build with
# the ASan runtime preloaded into the (uninstrumented) Python interpreter.
#
#   tools/sanitize.sh                          # the whole suite, as CI runs it (`pytest`)
#   tools/sanitize.sh -m slow tests/test_fuzz.py   # any pytest arguments
#
# The main environment is not touched: the sanitized build goes into build/asan (not
# build/dev) and into a virtualenv (default /tmp/eqcore-asan-venv, reused between runs;
# EQCORE_SANITIZE_VENV to change it, EQCORE_SANITIZE_FRESH=1 to recreate it). The venv sees the
# main environment's packages (numpy, pytest, hypothesis, ...) through --system-site-packages,
# so nothing is downloaded. See docs/sanitizers.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
CXX_BIN="${CXX:-g++}"
VENV="${EQCORE_SANITIZE_VENV:-${TMPDIR:-/tmp}/eqcore-asan-venv}"
BUILD_DIR="${EQCORE_SANITIZE_BUILD_DIR:-build/asan}"
BUILD_TYPE="${EQCORE_SANITIZE_BUILD_TYPE:-RelWithDebInfo}"  # -O2 -g: optimised, with line numbers

say() { printf '\n== %s\n' "$*" >&2; }
started=$SECONDS

# Where `import eqcore._core` resolves in the main environment, to prove afterwards that it
# still does (the editable install must survive this script).
main_core_before="$(cd / && "$PY" -c 'import eqcore._core as c; print(c.__file__)' 2>/dev/null || echo none)"

if [[ "${EQCORE_SANITIZE_FRESH:-0}" == 1 ]]; then rm -rf "$VENV"; fi
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating the virtualenv $VENV (--system-site-packages)"
  "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
site_dir="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# The main environment's editable install registers an import hook (a .pth file in the system
# site-packages, which this venv also reads) that sends `import eqcore` to the source tree and
# the non-sanitized extension. sitecustomize runs after every .pth file: drop that hook here.
cat > "$site_dir/sitecustomize.py" <<'EOF'
# Written by eqcore's tools/sanitize.sh: import the sanitized eqcore installed in this virtualenv,
# not the main environment's editable install (whose import hook the system .pth file added).
import sys

sys.meta_path[:] = [f for f in sys.meta_path
                    if not (type(f).__module__.startswith("_editable") and "eqcore" in type(f).__module__)]
EOF

say "building eqcore with EQCORE_SANITIZE=ON ($BUILD_TYPE) in $BUILD_DIR, installing into $VENV"
# --ignore-installed: never try to uninstall the main environment's eqcore (pip would refuse
# anyway, as it lies outside the venv). --no-deps: every dependency comes from the main env.
(cd "$REPO" && "$VPY" -m pip install --quiet --no-build-isolation --no-deps --ignore-installed \
  "-Cbuild-dir=$BUILD_DIR" -Ccmake.define.EQCORE_SANITIZE=ON "-Ccmake.build-type=$BUILD_TYPE" .)
build_seconds=$((SECONDS - started))

ASAN_LIB="$("$CXX_BIN" -print-file-name=libasan.so)"
UBSAN_LIB="$("$CXX_BIN" -print-file-name=libubsan.so)"
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
  [[ -e "$lib" ]] || { echo "sanitize.sh: $lib not found (is $CXX_BIN the compiler CMake used?)" >&2; exit 2; }
done
# Python itself is not instrumented, so the ASan runtime must be loaded first, before libc's
# malloc is in use. CPython keeps objects alive until exit by design: no leak checking.
# allocator_may_return_null: an impossible allocation (tests ask for terabytes on purpose) is a
# MemoryError, as without ASan, rather than an ASan abort.
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

say "checking that the sanitized extension is the one imported"
(cd / && "$VPY" - "$VENV" <<'EOF'
import sys, eqcore, eqcore._core as core
venv = sys.argv[1]
assert core.__file__.startswith(venv), f"imported {core.__file__}, not the sanitized build in {venv}"
maps = open("/proc/self/maps").read()
assert "libasan" in maps, "the ASan runtime is not loaded"
print(f"eqcore {eqcore.__version__}: {core.__file__} (ASan runtime loaded)")
EOF
)
main_core_after="$(cd / && env -u LD_PRELOAD "$PY" -c 'import eqcore._core as c; print(c.__file__)' 2>/dev/null || echo none)"
if [[ "$main_core_before" != "$main_core_after" ]]; then
  echo "sanitize.sh: the main environment's eqcore moved from $main_core_before to $main_core_after" >&2
  exit 2
fi

say "running pytest ${*:-(whole suite)} under ASan + UBSan"
set +e
(cd "$REPO" && "$VPY" -m pytest -p no:cacheprovider "$@")
status=$?
set -e
say "pytest exit status $status; build $build_seconds s, total $((SECONDS - started)) s"
exit $status
