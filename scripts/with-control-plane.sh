#!/usr/bin/env bash
# Runs a command with the test control plane up (scripts/control-plane.sh), then stops it:
#
#   scripts/with-control-plane.sh cargo test --workspace
#
# The command sees VOXEL_TEST_KUBECONFIG (the admin kubeconfig) and VOXEL_TEST_KUBECTL, and
# VOXEL_TEST_S3_ENDPOINT with VOXEL_TEST_S3_BUCKET: the S3-compatible test server of
# scripts/s3-server.sh, for the tests of artifacts in a bucket. Without
# Go the control plane cannot be built: outside CI the command then runs without it (the cluster
# tests say they are skipped); with CI set that is an error, as is a control plane that does not
# start.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v go >/dev/null 2>&1; then
  if [[ -n "${CI:-}" ]]; then
    echo "with-control-plane.sh: CI is set and Go is not installed: the test control plane cannot be built" >&2
    exit 1
  fi
  echo "with-control-plane.sh: Go is not installed; running without the test control plane" >&2
  exec "$@"
fi

state="${VOXEL_CACHE:-$HOME/.cache/voxel}/control-plane/run-$$"
tools="$(bash "$here/control-plane.sh" tools)"
bucket=voxel-test
trap 'bash "$here/s3-server.sh" stop "$state/s3"; bash "$here/control-plane.sh" stop "$state"; rm -rf "$state"' EXIT
kubeconfig="$(bash "$here/control-plane.sh" start "$state")"
s3="$(bash "$here/s3-server.sh" start "$state/s3" "$bucket")"
export VOXEL_TEST_KUBECONFIG="$kubeconfig" VOXEL_TEST_KUBECTL="$tools/kubectl"
export VOXEL_TEST_S3_ENDPOINT="$s3" VOXEL_TEST_S3_BUCKET="$bucket"
"$@"
