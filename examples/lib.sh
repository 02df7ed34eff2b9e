# Shared by the walkthroughs: where things are, `causeway` standing in for istioctl/kind/docker,
# and the step-by-step progress with timings. Sourced, not run.
#
# Every walkthrough:
#   - starts over: it takes down the lab of its directory first, so running it again is safe;
#   - writes every command and its output to $WALKTHROUGH_DIR/walkthrough.log and prints one line per
#     step (`✔ cluster01 created (0.4 s)`); a failing step prints `✘`, the command that failed, the
#     log's last lines and where to look next;
#   - leaves the lab up, with the two exports that reach it.
# Environment: WALKTHROUGH_DIR (default ./demo-lab), CAUSEWAY (the binary, default the workspace's
# debug build), VERBOSE=1 (print every command's output too).
set -eEuo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
samples=$repo/testdata/samples
source "$repo/scripts/lib.sh"
ensure_commands openssl:openssl kubectl:kubernetes-client ip:iproute2 iptables-restore:iptables curl:curl

CAUSEWAY=${CAUSEWAY:-$repo/target/debug/causeway}
if [ ! -x "$CAUSEWAY" ]; then
    echo "no causeway binary at $CAUSEWAY: run \`cargo build -p causeway\` or scripts/demo first" >&2
    exit 1
fi
# fd 3 (the terminal) is closed for causeway: the lab daemons it starts must not hold it open.
causeway() { "$CAUSEWAY" "$@" 3>&-; }

WALKTHROUGH_DIR=$(mkdir -p "${WALKTHROUGH_DIR:-$PWD/demo-lab}" && cd "${WALKTHROUGH_DIR:-$PWD/demo-lab}" && pwd)
# The walkthrough keeps its clusters and kubeconfig to itself; these two reach them afterwards.
export CAUSEWAY_LAB_DIR=$WALKTHROUGH_DIR/state KUBECONFIG=$WALKTHROUGH_DIR/kubeconfig
log=$WALKTHROUGH_DIR/walkthrough.log
: >"$log"
# fd 3 is the terminal: progress and results go there, the commands' own output to the log.
exec 3>&1
if [ "${VERBOSE:-0}" = 1 ]; then
    exec > >(tee -a "$log") 2>&1
else
    exec >>"$log" 2>&1
fi
set -x

walkthrough_started=$(date +%s%N)
step_name=""
step_hint=""
step_started=0

elapsed() { # elapsed START_NS: seconds since START_NS, one decimal
    local ns=$(( $(date +%s%N) - $1 ))
    printf '%d.%d' $(( ns / 1000000000 )) $(( ns / 100000000 % 10 ))
}

finish_step() {
    [ -n "$step_name" ] && printf '✔ %s (%s s)\n' "$step_name" "$(elapsed "$step_started")" >&3
    step_name=""
}

# step NAME [HINT]: the commands after it, up to the next step, are NAME; HINT is the command that
# shows more when they fail.
step() {
    { set +x; } 2>/dev/null
    finish_step
    step_name=$1
    step_hint=${2:-}
    step_started=$(date +%s%N)
    echo "### $step_name"
    set -x
}

# say TEXT...: a line for the reader, on the terminal and in the log.
say() {
    { set +x; } 2>/dev/null
    printf '%s\n' "$@" >&3
    printf '%s\n' "$@"
    set -x
}

on_failure() {
    local status=$? line=$1 command=$2
    { set +x; } 2>/dev/null
    trap - ERR
    # In a command substitution, the step that runs it reports the failure.
    [ "$BASH_SUBSHELL" -gt 0 ] && exit "$status"
    {
        printf '✘ %s failed (exit %s) at %s line %s:\n    %s\n' \
            "${step_name:-setup}" "$status" "$(basename "$0")" "$line" "$command"
        echo "Last lines of $log:"
        tail -n 15 "$log" | sed 's/^/    /'
        # What the clusters' pods were doing, for a failure seen only in CI.
        local context
        for context in kind-cluster01 kind-cluster02; do
            echo "Pods of $context:"
            kubectl --context "$context" get pods -A -o wide 2>&1 | sed 's/^/    /'
            kubectl --context "$context" get events -A --field-selector type=Warning 2>&1 | tail -n 8 | sed 's/^/    /'
        done
        [ -n "$step_hint" ] && echo "More: $step_hint"
        echo "Whole log: $log"
        echo "The lab is left as it is; with these exports, kubectl reaches it:"
        echo "    export CAUSEWAY_LAB_DIR=$CAUSEWAY_LAB_DIR KUBECONFIG=$KUBECONFIG"
        echo "Take it down: $CAUSEWAY lab down"
    } >&3
    exit "$status"
}
trap 'on_failure $LINENO "$BASH_COMMAND"' ERR

# Starting over: the lab of this directory, and what an earlier run left in it.
start_over() {
    step "Previous lab taken down"
    causeway lab down
    rm -rf "$WALKTHROUGH_DIR/certs" "$KUBECONFIG"
}

# make_cacerts CLUSTER...: the seeds' Makefile.selfsigned.mk root-ca and CLUSTER-cacerts, then
# each cluster's cacerts Secret (seed 001 "配置信任关系").
make_cacerts() {
    step "Root CA and each cluster's intermediate CA (cacerts) made"
    mkdir -p "$WALKTHROUGH_DIR/certs"
    pushd "$WALKTHROUGH_DIR/certs"
    causeway certs root-ca
    local cluster
    for cluster in "$@"; do
        causeway certs "$cluster-cacerts"
    done
    popd
    for cluster in "$@"; do
        step "cacerts Secret created in $cluster"
        kubectl --context "kind-$cluster" create namespace istio-system
        kubectl --context "kind-$cluster" create secret generic cacerts -n istio-system \
            --from-file="$WALKTHROUGH_DIR/certs/$cluster/ca-cert.pem" \
            --from-file="$WALKTHROUGH_DIR/certs/$cluster/ca-key.pem" \
            --from-file="$WALKTHROUGH_DIR/certs/$cluster/root-cert.pem" \
            --from-file="$WALKTHROUGH_DIR/certs/$cluster/cert-chain.pem"
    done
}

# create_cluster NAME: seed 001 "创建两个集群": kind create cluster, then metallb's address pool.
create_cluster() {
    local name=$1
    step "$name created" "causeway lab get-clusters"
    causeway lab create-cluster --config "$samples/topologies/$name-kind.yaml"
    # metallb: the lab's load balancer serves the pools kubectl applies, as metallb-native does.
    kubectl --context "kind-$name" apply -f "$samples/topologies/$name-lb-pool.yaml"
}

# node_address CLUSTER: the seeds' `docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}'
# CLUSTER-control-plane`, read from the node object.
node_address() {
    kubectl --context "kind-$1" get node "$1-control-plane" \
        -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'
}

# connect_flat_network: seed 001 "两个集群网络打通": each node routes the other cluster's pod and
# service subnets through the other node (`docker container exec` becomes `causeway lab node-exec`).
connect_flat_network() {
    step "Flat network: each node routes the other cluster's pods and services"
    local node01 node02
    node01=$(node_address cluster01)
    node02=$(node_address cluster02)
    causeway lab node-exec cluster01 -- ip route add 10.20.0.0/16 via "$node02" dev eth0
    causeway lab node-exec cluster01 -- ip route add 10.21.0.0/16 via "$node02" dev eth0
    causeway lab node-exec cluster02 -- ip route add 10.10.0.0/16 via "$node01" dev eth0
    causeway lab node-exec cluster02 -- ip route add 10.11.0.0/16 via "$node01" dev eth0
}

# discovery_address: seed 001 "保存 cluster01 东西向网关的地址" (DISCOVERY_ADDRESS).
discovery_address() {
    kubectl --context="kind-cluster01" -n istio-system get svc istio-eastwestgateway \
        -o jsonpath='{.status.loadBalancer.ingress[0].ip}'
}

# with_discovery_address FILE: the IstioOperator file with ${DISCOVERY_ADDRESS} filled in, as the
# seed's `cat <<EOF` does.
with_discovery_address() {
    local filled=$WALKTHROUGH_DIR/$(basename "$(dirname "$1")")-$(basename "$1")
    sed "s/\${DISCOVERY_ADDRESS}/$DISCOVERY_ADDRESS/" "$1" >"$filled"
    echo "$filled"
}

# wait_for_east_west_gateway CLUSTER: seed 001 "等待东西向网关获取外部 IP 地址".
wait_for_east_west_gateway() {
    local cluster=$1 address=""
    for _ in $(seq 100); do
        address=$(kubectl --context="kind-$cluster" -n istio-system get svc istio-eastwestgateway \
            -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
        [ -n "$address" ] && break
        sleep 0.1
    done
    [ -n "$address" ]
    kubectl --context="kind-$cluster" get svc istio-eastwestgateway -n istio-system
    kubectl --context="kind-$cluster" -n istio-system wait --for=condition=Ready pods \
        -l istio=eastwestgateway --timeout=120s
}

# expect_remote_clusters_synced CLUSTER REMOTE: CLUSTER's control plane has read REMOTE through
# its remote secret (`istioctl remote-clusters`).
expect_remote_clusters_synced() {
    local cluster=$1 remote=$2 clusters=""
    for _ in $(seq 100); do
        clusters=$(causeway remote-clusters --context "kind-$cluster" || true)
        grep -Eq "^$remote .* synced\$" <<<"$clusters" && break
        sleep 0.2
    done
    echo "$clusters"
    grep -Eq "^$remote .* synced\$" <<<"$clusters"
}

# expect_no_direct_path FROM TO: on separate networks, FROM's sleep pod cannot reach a pod of TO
# by its address; only the east-west gateway joins the networks.
expect_no_direct_path() {
    local from=$1 to=$2 pod address
    step "No direct path from $from's pods to $to's pods"
    pod=$(kubectl get pod --context="kind-$from" -n sample -l app=sleep -o jsonpath='{.items[0].metadata.name}')
    address=$(kubectl get pod --context="kind-$to" -n sample -l app=helloworld -o jsonpath='{.items[0].status.podIP}')
    if kubectl exec --context="kind-$from" -n sample -c sleep "$pod" -- \
        curl -sS --max-time 3 "http://$address:5000/hello"; then
        say "✘ $from's sleep pod reached $to's pod $address directly: the networks are not separate"
        false
    fi
}

# deploy_samples: seed 001 "验证安装结果": helloworld's Service in both clusters, v1 in cluster01,
# v2 in cluster02, sleep in both, and the wait for them to be ready.
deploy_samples() {
    local cluster
    step "Samples deployed: helloworld v1 in cluster01, v2 in cluster02, sleep in both" \
        "kubectl --context kind-cluster01 -n sample describe pods"
    for cluster in cluster01 cluster02; do
        kubectl create --context="kind-$cluster" namespace sample
        kubectl label --context="kind-$cluster" namespace sample istio-injection=enabled
        kubectl apply --context="kind-$cluster" -f "$samples/helloworld.yaml" -l service=helloworld -n sample
    done
    kubectl apply --context="kind-cluster01" -f "$samples/helloworld.yaml" -l version=v1 -n sample
    kubectl apply --context="kind-cluster02" -f "$samples/helloworld.yaml" -l version=v2 -n sample
    for cluster in cluster01 cluster02; do
        kubectl apply --context="kind-$cluster" -f "$samples/sleep.yaml" -n sample
    done
    step "Sample pods ready, each with its sidecar" \
        "kubectl --context kind-cluster01 -n sample get pods; causeway proxy-status"
    for cluster in cluster01 cluster02; do
        kubectl --context "kind-$cluster" -n sample wait --for=condition=Ready pods --all --timeout=120s
    done
}

# verify_cross_cluster_traffic MODE: the seeds' check ("验证跨集群流量"), then what the access logs
# say about it; MODE is `direct` (flat network) or `gateway` (multi-network).
verify_cross_cluster_traffic() {
    verify_ten_requests
    summarise_access_logs "$1"
}

# verify_ten_requests: ten requests from each cluster's sleep pod, printed as the seed shows them,
# both versions answering; then every proxy SYNCED.
verify_ten_requests() {
    local cluster pod answers failed
    step "Ten requests from each cluster's sleep pod answered" "causeway proxy-status --context kind-cluster01"
    for cluster in cluster01 cluster02; do
        pod=$(kubectl get pod --context="kind-$cluster" -n sample -l app=sleep -o jsonpath='{.items[0].metadata.name}')
        answers=$(for i in $(seq 10); do
            kubectl exec --context="kind-$cluster" -n sample -c sleep "$pod" -- curl -s helloworld.sample:5000/hello || true
        done)
        failed=$(( 10 - $(grep -c '^Hello version: ' <<<"$answers" || true) ))
        say "" "From $cluster's sleep pod ($failed of 10 failed):" "$answers"
        grep -q 'Hello version: v1' <<<"$answers"
        grep -q 'Hello version: v2' <<<"$answers"
    done
    say ""
    # shellcheck disable=SC2046 # one cluster name per word
    expect_proxies_synced $(control_plane_clusters)
}

# expect_proxies_synced CLUSTER...: `causeway proxy-status` of each cluster's control plane lists
# proxies, and every one has ACKed its clusters, listeners and endpoints (sidecars use no RDS).
expect_proxies_synced() {
    local cluster status
    step "Every proxy has its latest config" "causeway proxy-status --context kind-$1"
    for cluster in "$@"; do
        status=$(causeway proxy-status --context "kind-$cluster")
        echo "$status"
        [ "$(awk 'NR > 1' <<<"$status" | wc -l)" -gt 0 ]
        [ -z "$(awk 'NR > 1 && ($4 != "SYNCED" || $5 != "SYNCED" || $6 != "SYNCED")' <<<"$status")" ]
    done
}

# summarise_access_logs MODE [NAMESPACE]: `causeway lab traffic --expect MODE` for the sleep pods
# of NAMESPACE (default sample), shown.
summarise_access_logs() {
    local summary namespace=${2:-sample}
    step "Access logs show how each request crossed" "kubectl --context kind-cluster01 -n $namespace logs deploy/sleep -c istio-proxy"
    summary=$(causeway lab traffic --namespace "$namespace" --expect "$1")
    finish_step
    say "" "$summary"
}

# control_plane_clusters: the clusters running an istiod pod.
control_plane_clusters() {
    local cluster
    for cluster in cluster01 cluster02; do
        kubectl --context "kind-$cluster" -n istio-system get pods -l app=istiod -o name | grep -q . && echo "$cluster"
    done
    return 0
}

# done_message: what the mesh costs, how to reach the lab that stays up, and how to take it down.
done_message() {
    finish_step
    local took
    took=$(elapsed "$walkthrough_started")
    say "" "Memory of the lab's processes:" "$(causeway lab memory)"
    say "" "Done in $took s. The lab stays up; to use it:" \
        "    export CAUSEWAY_LAB_DIR=$CAUSEWAY_LAB_DIR KUBECONFIG=$KUBECONFIG" \
        "    kubectl --context kind-cluster01 get pods -A" \
        "    $CAUSEWAY proxy-status --context kind-cluster01" \
        "To take it down (with the exports above): $CAUSEWAY lab down" \
        "Every command and its output: $log"
}
