#!/usr/bin/env bash
# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, all
# real binaries built by localcluster/build-k8s.sh) plus the process node (localcluster/processnode, a
# kubelet stand-in that runs pods as local processes). For tests and the demo: see localcluster/README.md.
#
#   localcluster/cluster.sh up      start (idempotent: a running healthy cluster is reused);
#                                   the last stdout line is `export KUBECONFIG=<path>`
#   localcluster/cluster.sh down    stop everything and remove the state directory
#   localcluster/cluster.sh status  print component health; exit 0 when the cluster is healthy
#   localcluster/cluster.sh stop <component>     stop one component, keep its state (a fault, for chaos runs)
#   localcluster/cluster.sh restart <component>  stop it, then `up` (starts what is missing, waits until healthy)
#                                   components: etcd kube-apiserver kube-controller-manager kube-scheduler processnode
#
# Environment: FTO_STATE_DIR (default /tmp/finetune-operator-cluster), FTO_APISERVER_PORT (16443).
# Other loopback ports are derived from the apiserver port so two clusters (different state dirs
# and apiserver ports) can run side by side: etcd client = port-4064, etcd peer = port-4063,
# controller-manager = port+1, scheduler = port+2, process node's log endpoint = port+3.
# Process node options: FTO_NODE_CPU (16), FTO_NODE_MEMORY (64Gi), FTO_NODE_PODS (110), FTO_NODE_GPUS (2).
# FTO_K8S_BIN: prebuilt binaries (default: the output of build-k8s.sh, which builds them once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
STATE="$(realpath -m "${FTO_STATE_DIR:-/tmp/finetune-operator-cluster}")"
PORT="${FTO_APISERVER_PORT:-16443}"
ETCD_PORT=$((PORT - 4064))
ETCD_PEER_PORT=$((PORT - 4063))
KCM_PORT=$((PORT + 1))
SCHED_PORT=$((PORT + 2))
KUBELET_PORT=$((PORT + 3))
PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
KUBECONFIG_PATH="$STATE/admin.kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler processnode)

log() { echo ">> $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

alive() { # pid: running and not a zombie (orphans wait for PID 1 to reap them)
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n "$state" && "$state" != Z ]]
}

pid_of() { # prints the pid of a running component, or nothing
  local f="$RUN/$1.pid" pid
  [[ -f "$f" ]] || return 0
  pid=$(<"$f")
  if [[ -n "$pid" ]] && alive "$pid"; then echo "$pid"; fi
}

https_ok() { # url [cert key]: 0 when GET returns "ok"
  local url=$1
  if [[ $# -ge 3 ]]; then
    [[ "$(curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$2" --key "$3" "$url" 2>/dev/null)" == ok ]]
  else
    [[ "$(curl -fsSk --max-time 3 "$url" 2>/dev/null)" == ok ]]
  fi
}

apiserver_ready() { https_ok "https://127.0.0.1:$PORT/readyz" "$PKI/admin.crt" "$PKI/admin.key"; }

node_ready() { # this process node registered (its ready file holds its pid), Ready and untainted
  local pid; pid=$(pid_of processnode)
  [[ -n "$pid" && "$(cat "$RUN/processnode.ready" 2>/dev/null)" == "$pid" ]] || return 1
  [[ "$("$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get node process-node \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}/{.spec.taints}' 2>/dev/null)" == "True/" ]]
}

healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do [[ -n "$(pid_of "$c")" ]] || return 1; done
  apiserver_ready && https_ok "https://127.0.0.1:$KCM_PORT/healthz" && https_ok "https://127.0.0.1:$SCHED_PORT/healthz" \
    && node_ready
}

wait_for() { # seconds description command...  (WATCH=<component>: fail fast if it exits)
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "${WATCH:-}" && -z "$(pid_of "$WATCH")" ]]; then
      tail -n 15 "$LOGS/$WATCH.log" >&2 || true
      die "$WATCH exited while waiting for $what (log: $LOGS/$WATCH.log)"
    fi
    if ((SECONDS >= deadline)); then die "timed out after ${secs}s waiting for $what (logs: $LOGS)"; fi
    sleep 0.3
  done
}

start() { # name command... : runs detached in its own session, logs to $LOGS/<name>.log
  local name=$1; shift
  # 9>&-: daemons must not inherit the lock's file descriptor (they would hold it forever).
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/$name.pid"
}

# --- PKI ---------------------------------------------------------------------------------------
# ECDSA P-256 keys: as good as RSA-2048 for a local cluster and ~100x faster to generate on a
# loaded 2-core machine (the service-account tokens are then ES256 JWTs).
genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

gen_cert() { # name subject [ext-file-section-content]
  local name=$1 subj=$2 ext=${3:-}
  genkey "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

gen_pki() {
  [[ -f "$PKI/.done" ]] && return 0
  mkdir -p "$PKI"
  log "generating PKI in $PKI"
  genkey "$PKI/ca.key"
  openssl req -x509 -new -nodes -key "$PKI/ca.key" -subj "/CN=finetune-operator-local-ca" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  gen_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  gen_cert admin "/O=system:masters/CN=kubernetes-admin" "$client"
  # The process node authenticates as a real kubelet would: the Node authorizer and the
  # NodeRestriction admission plugin limit it to its own node and the pods bound to it.
  gen_cert node "/O=system:nodes/CN=system:node:process-node" "$client"
  # The process node's serving certificate (kubectl logs goes apiserver -> node) and the
  # apiserver's client certificate towards it.
  gen_cert node-serving "/CN=process-node" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:process-node,DNS:localhost"
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  genkey "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
  touch "$PKI/.done"
}

write_kubeconfig() { # path user cert key
  local path=$1 user=$2 cert=$3 key=$4
  cat >"$path.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $cert
    client-key: $key
contexts:
- name: local
  context:
    cluster: local
    user: $user
current-context: local
KC
  mv "$path.tmp" "$path"
}

# --- components ------------------------------------------------------------------------------------
start_etcd() {
  [[ -n "$(pid_of etcd)" ]] && return 0
  mkdir -p "$STATE/etcd"
  start etcd "$BIN/etcd" --name local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:$((ETCD_PORT + 2))" \
    --unsafe-no-fsync --snapshot-count 10000 --quota-backend-bytes 4294967296 --log-level warn
}

start_apiserver() {
  [[ -n "$(pid_of kube-apiserver)" ]] && return 0
  # Admission: the defaults of a kubeadm cluster that make sense without a real kubelet/cloud.
  local admission=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,Priority,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,CertificateApproval,CertificateSigning,CertificateSubjectRestriction,DefaultIngressClass,TaintNodesByCondition,MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --authorization-mode Node,RBAC --anonymous-auth=true \
    --enable-admission-plugins "$admission" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true --enable-priority-and-fairness=false \
    --event-ttl 1h --profiling=false -v=1
}

start_controller_manager() {
  [[ -n "$(pid_of kube-controller-manager)" ]] && return 0
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_PATH" \
    --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$STATE/kcm-certs" \
    --leader-elect=false --controllers '*' --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --concurrent-gc-syncs 20 --terminated-pod-gc-threshold 1000 \
    --profiling=false -v=1
}

start_scheduler() {
  [[ -n "$(pid_of kube-scheduler)" ]] && return 0
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_PATH" \
    --authentication-kubeconfig "$KUBECONFIG_PATH" --authorization-kubeconfig "$KUBECONFIG_PATH" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --cert-dir "$STATE/scheduler-certs" \
    --leader-elect=false --profiling=false -v=1
}

start_processnode() {
  [[ -n "$(pid_of processnode)" ]] && return 0
  local venv; venv="$(bash "$root/hack/venv.sh")"
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" start processnode "$venv/bin/python" -m processnode \
    --kubeconfig "$STATE/node.kubeconfig" --state-dir "$STATE" --node-name process-node \
    --apiserver-port "$PORT" --venv "$venv" --project-root "$root" \
    --cpu "${FTO_NODE_CPU:-16}" --memory "${FTO_NODE_MEMORY:-64Gi}" --pods "${FTO_NODE_PODS:-110}" \
    --gpus "${FTO_NODE_GPUS:-2}" --sync-period "${FTO_NODE_SYNC_PERIOD:-30}" \
    --kubelet-port "$KUBELET_PORT" --serving-cert "$PKI/node-serving.crt" --serving-key "$PKI/node-serving.key" \
    --client-ca "$PKI/ca.crt" --ready-file "$RUN/processnode.ready"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() { # components about to start must find their ports free (another cluster's etcd would answer!)
  local c p
  declare -A ports=([etcd]="$ETCD_PORT $ETCD_PEER_PORT $((ETCD_PORT + 2))" [kube-apiserver]="$PORT" \
    [kube-controller-manager]="$KCM_PORT" [kube-scheduler]="$SCHED_PORT" [processnode]="$KUBELET_PORT")
  for c in "${!ports[@]}"; do
    [[ -n "$(pid_of "$c")" ]] && continue
    for p in ${ports[$c]}; do
      port_busy "$p" && die "port $p (for $c) is already in use: another cluster? Use a different FTO_APISERVER_PORT (ports are derived from it)"
    done
  done
  return 0
}

cmd_up() {
  BIN="${FTO_K8S_BIN:-$(bash "$here/build-k8s.sh" | tail -n1)}"
  local venv; venv="$(bash "$root/hack/venv.sh")"
  KUBECTL="$venv/bin/kubectl"
  mkdir -p "$STATE" "$LOGS" "$RUN" "$STATE/pods"
  if healthy; then
    log "reusing the running cluster in $STATE"
    echo "export KUBECONFIG=$KUBECONFIG_PATH"
    return 0
  fi
  local t0=$SECONDS
  check_ports
  gen_pki
  write_kubeconfig "$KUBECONFIG_PATH" kubernetes-admin "$PKI/admin.crt" "$PKI/admin.key"
  write_kubeconfig "$STATE/node.kubeconfig" system:node:process-node "$PKI/node.crt" "$PKI/node.key"
  start_etcd
  WATCH=etcd wait_for 60 etcd bash -c "curl -fsS --max-time 2 http://127.0.0.1:$ETCD_PORT/health | grep -q true"
  log "etcd ready after $((SECONDS - t0))s"
  start_apiserver
  WATCH=kube-apiserver wait_for 120 kube-apiserver apiserver_ready
  log "kube-apiserver ready after $((SECONDS - t0))s"
  start_controller_manager
  start_scheduler
  start_processnode
  WATCH=kube-controller-manager wait_for 60 kube-controller-manager https_ok "https://127.0.0.1:$KCM_PORT/healthz"
  WATCH=kube-scheduler wait_for 60 kube-scheduler https_ok "https://127.0.0.1:$SCHED_PORT/healthz"
  WATCH=processnode wait_for 60 "Node/process-node Ready" node_ready
  log "controller-manager, scheduler and Node/process-node ready after $((SECONDS - t0))s"
  # The root-CA publisher and the service-account controller run asynchronously; wait for the
  # default namespace to be usable by pods (its ServiceAccount and kube-root-ca.crt exist).
  wait_for 60 "default ServiceAccount" "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get serviceaccount default -o name
  wait_for 60 "kube-root-ca.crt" "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get configmap kube-root-ca.crt -o name
  log "cluster up in $((SECONDS - t0))s (state: $STATE, logs: $LOGS)"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

stop_components() { # name...: SIGTERM the process groups together, SIGKILL what is left after 10 s
  local name pid pids=() i
  for name in "$@"; do
    pid=$(pid_of "$name")
    rm -f "$RUN/$name.pid"
    [[ -n "$pid" ]] || continue
    pids+=("$pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 100); do
    for pid in "${pids[@]}"; do alive "$pid" && break; pid=; done
    [[ -z "${pid:-}" ]] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}

cmd_down() {
  [[ -d "$STATE" ]] || { log "nothing to stop ($STATE does not exist)"; return 0; }
  local c
  # The process node first: on SIGTERM it stops its pods' processes and unmounts their volumes. With it, what
  # was started beside the cluster (extra process nodes, Kueue: localcluster/ftdev), found by its pid file.
  local f extra=()
  for f in "$RUN"/*.pid; do
    [[ -f "$f" ]] || continue
    f=$(basename "$f" .pid)
    [[ " ${COMPONENTS[*]} " == *" $f "* ]] || extra+=("$f")
  done
  stop_components processnode "${extra[@]}"
  # The rest holds nothing worth a graceful shutdown: its state is deleted next.
  local pid
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid=$(pid_of "$c")
    [[ -n "$pid" ]] && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$RUN/$c.pid"
  done
  # Pods' processes that outlived the node (it was SIGKILLed): by their pid files, then every
  # process whose environment carries this state dir (the process node marks its containers).
  for f in "$STATE"/pods/*/*.pid; do
    [[ -f "$f" ]] || continue
    kill -KILL -- "-$(<"$f")" 2>/dev/null || true
  done
  for f in /proc/[0-9]*/environ; do
    if tr '\0' '\n' 2>/dev/null <"$f" | grep -qxF "PROCESSNODE_STATE_DIR=$STATE"; then
      f=${f#/proc/}; kill -KILL "${f%/environ}" 2>/dev/null || true
    fi
  done
  # Any mount left below the state dir (tmpfs emptyDirs are mounted in the pods' namespaces only,
  # but be safe) must go before rm -rf.
  if command -v findmnt >/dev/null; then
    { findmnt -rn -o TARGET | grep -F "$STATE/" || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  rm -rf "$STATE"
  log "cluster stopped, $STATE removed"
}

cmd_status() {
  local venv; venv="$(bash "$root/hack/venv.sh")"
  KUBECTL="$venv/bin/kubectl"
  local c ok=0
  for c in "${COMPONENTS[@]}"; do
    printf '%-24s %s\n' "$c" "$( [[ -n "$(pid_of "$c")" ]] && echo "running (pid $(pid_of "$c"))" || echo stopped)"
  done
  if apiserver_ready; then echo "apiserver /readyz        ok (https://127.0.0.1:$PORT)"; else echo "apiserver /readyz        not ready"; ok=1; fi
  if node_ready; then echo "Node/process-node        Ready"; else echo "Node/process-node        not ready"; ok=1; fi
  healthy || ok=1
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  return $ok
}

cmd_stop() { # component: SIGTERM (the process node stops its pods' processes, keeping their API objects), then
  # SIGKILL after 10 s; the state directory stays, so `up` brings the same cluster back.
  local c=${1:-}
  [[ " ${COMPONENTS[*]} " == *" $c "* ]] || die "stop: unknown component '$c' (one of: ${COMPONENTS[*]})"
  [[ -d "$STATE" ]] || die "stop: no cluster in $STATE"
  stop_components "$c"
  log "$c stopped"
}

# One `up`/`down` at a time per state directory (pytest sessions may start concurrently).
lock() { exec 9>"${STATE%/}.cluster-sh.lock"; flock -w 300 9 || die "could not lock ${STATE%/}.cluster-sh.lock"; }

case "${1:-}" in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) cmd_status ;;
  stop) lock; cmd_stop "${2:-}" ;;
  restart) lock; cmd_stop "${2:-}"; cmd_up ;;
  *) echo "usage: $0 up|down|status|stop <component>|restart <component>" >&2; exit 2 ;;
esac
