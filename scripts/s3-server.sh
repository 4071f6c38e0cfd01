#!/usr/bin/env bash
# The tests' S3-compatible server: gofakes3 (MIT, an S3 API server for tests, in memory), built
# from the Go module proxy like the control plane. TEST INFRASTRUCTURE: it speaks the S3 REST
# protocol that object_store uses, but checks no credentials and keeps nothing on disk.
#
#   scripts/s3-server.sh build              builds (or reuses) the server; prints its path
#   scripts/s3-server.sh start DIR BUCKET   starts it with the bucket BUCKET; prints its endpoint
#   scripts/s3-server.sh stop DIR           stops what `start DIR` started
set -euo pipefail

GOFAKES3_VERSION=v1.2.0
cache=${VOXEL_CACHE:-$HOME/.cache/voxel}/s3-server
bin="$cache/gofakes3-$GOFAKES3_VERSION/bin/voxel-test-s3"
log() { echo "s3-server.sh: $*" >&2; }
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

build() {
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return
  fi
  local src="$cache/src/gofakes3-$GOFAKES3_VERSION"
  mkdir -p "$src" "$(dirname "$bin")"
  cat >"$src/go.mod" <<GOMOD
module voxel.dev/tests3

go 1.26

require github.com/johannesboyne/gofakes3 $GOFAKES3_VERSION
GOMOD
  cat >"$src/main.go" <<'GO'
// voxel-test-s3 serves an in-memory S3 API on loopback for Voxel's tests.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	addressFile := flag.String("address-file", "", "file to write the bound address to")
	bucket := flag.String("bucket", "", "bucket to create at start")
	flag.Parse()
	backend := s3mem.New()
	if *bucket != "" {
		if err := backend.CreateBucket(*bucket); err != nil {
			log.Fatalf("creating bucket %s: %v", *bucket, err)
		}
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listening on %s: %v", *listen, err)
	}
	if *addressFile != "" {
		if err := os.WriteFile(*addressFile, []byte(listener.Addr().String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	faker := gofakes3.New(backend)
	log.Fatal(http.Serve(listener, faker.Server()))
}
GO
  log "building gofakes3 $GOFAKES3_VERSION"
  (cd "$src" && go mod tidy >&2 && go build -o "$bin" .)
  echo "$bin"
}

start() {
  local dir=$1 bucket=$2
  mkdir -p "$dir"
  rm -f "$dir/address"
  "$(build)" -bucket "$bucket" -address-file "$dir/address" >"$dir/s3.log" 2>&1 &
  echo $! >"$dir/s3.pid"
  for _ in $(seq 100); do
    if [[ -s "$dir/address" ]]; then
      echo "http://$(cat "$dir/address")"
      return
    fi
    sleep 0.1
  done
  log "the server did not start; its log:"
  cat "$dir/s3.log" >&2
  exit 1
}

stop() {
  local dir=$1
  if [[ -f "$dir/s3.pid" ]]; then
    kill "$(cat "$dir/s3.pid")" 2>/dev/null || true
    rm -f "$dir/s3.pid"
  fi
}

case "${1:-}" in
  build) build ;;
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 build | start DIR BUCKET | stop DIR" >&2; exit 64 ;;
esac
