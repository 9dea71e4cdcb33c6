#!/usr/bin/env bash
# Rebuild BENCHMARKS.md from the per-part benchmark notes in docs/bench-*.md.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat <<'HEAD'
# Benchmarks

Every figure below comes from a script in `scripts/` run on this project's machine kind
(2 CPU cores, 24 GB, no GPU), with the exact command next to it. Each part's notes live in
`docs/bench-*.md`; this file is rebuilt from them by `scripts/make_benchmarks_md.sh`.
Many runs were made while several engineers shared the 2 cores: each section says how loaded
the machine was, and CPU-time figures are given where wall-clock ones were distorted.

HEAD
  for part in quality teacher distill pretrain indexes encode service metrics data; do
    f="docs/bench-$part.md"
    [ -f "$f" ] || continue
    echo
    cat "$f"
    echo
  done
} > BENCHMARKS.md
