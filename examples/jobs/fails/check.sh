#!/usr/bin/env bash
# A validation step that finds a problem and exits non-zero.
echo "checking input..."
echo "error: column 'amount' is missing" >&2
exit 3
