#!/usr/bin/env bash
# Lists what banger left on this host (in the current network namespace)
# that no VM accounts for, and exits non-zero on any leak. Uses the banger
# in PATH, or $BANGER. Pass -o json for machine-readable output.
set -euo pipefail
exec "${BANGER:-banger}" system verify "$@"
