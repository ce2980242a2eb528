#!/usr/bin/env bash
# Vulnerability audit of the dependency set: pip-audit over the packages installed in this Python environment
# (install the project first, as .ci/run does: `pip install -e ".[dev]"`), slmops itself (editable) left out.
#
#   bash scripts/audit.sh            # exit 0: no known vulnerability, or the audit could not reach its database
#                                    # exit 1: known vulnerabilities (listed), or pip-audit failed for another reason
#
# pip-audit looks every package up in its vulnerability database over the network. Where that database cannot
# be reached (an offline machine, a sandbox), the audit is skipped with a notice instead of failing the build;
# on GitHub Actions the notice is an annotation (::notice::). SLMOPS_AUDIT_ARGS adds pip-audit flags, e.g.
# "--ignore-vuln GHSA-xxxx-xxxx-xxxx" for an advisory reviewed and accepted.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

notice() {
  if [ -n "${GITHUB_ACTIONS:-}" ]; then echo "::notice title=vulnerability audit skipped::$1"; fi
  echo "audit: SKIPPED: $1" >&2
}

# The network errors pip and pip-audit report when the index or the database is out of reach.
OFFLINE='ConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|NewConnectionError|Name or service not known|Temporary failure in name resolution|Network is unreachable|Connection refused|ProxyError|No matching distribution found for pip-audit|timed out'

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  if ! "$PY" -m pip install --quiet --disable-pip-version-check "pip-audit>=2.7,<3" >"$log" 2>&1; then
    if grep -Eq "$OFFLINE" "$log"; then
      notice "pip-audit could not be installed: the package index is unreachable ($(grep -Eo "$OFFLINE" "$log" | head -1))"
      exit 0
    fi
    cat "$log" >&2
    echo "audit: FAILED: pip-audit could not be installed" >&2
    exit 1
  fi
fi

# shellcheck disable=SC2086  # SLMOPS_AUDIT_ARGS is a list of flags
"$PY" -m pip_audit --skip-editable --progress-spinner off --desc on ${SLMOPS_AUDIT_ARGS:-} >"$log" 2>&1
code=$?
if [ "$code" -eq 0 ]; then
  cat "$log"
  echo "audit: no known vulnerabilities in the installed dependencies" >&2
  exit 0
fi
if grep -Eq "Found [0-9]+ known vulnerabilit" "$log"; then
  cat "$log"
  echo "audit: FAILED: known vulnerabilities above; upgrade the packages named (pins in pyproject.toml and environments/)" >&2
  exit 1
fi
if grep -Eq "$OFFLINE" "$log"; then
  notice "the vulnerability database is unreachable from this machine ($(grep -Eo "$OFFLINE" "$log" | head -1)); run scripts/audit.sh where it is reachable"
  exit 0
fi
cat "$log" >&2
echo "audit: FAILED: pip-audit exited $code" >&2
exit "$code"
