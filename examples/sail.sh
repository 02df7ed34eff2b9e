#!/usr/bin/env bash
# Seed 003 (OpenShift Service Mesh 3, the Sail operator): two primaries on two networks, from Istio resources.
# The operator in each cluster turns the seed's `Istio` and `IstioCNI` resources into the control
# plane and the CNI plugin's configuration; the CA files are made with the seed's own openssl
# commands; the east-west gateways are the seed's injected gateway Deployments.
# OpenShift's `oc` is kubectl here, its clusters are lab clusters (kind-cluster01 is East,
# kind-cluster02 West), and `causeway install-operator` stands in for OperatorHub.
# Usage: examples/sail.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
CTX_CLUSTER1=kind-cluster01
CTX_CLUSTER2=kind-cluster02
ISTIO_VERSION=1.24.1

start_over
create_cluster cluster01
create_cluster cluster02

# 为每个集群安装 OpenShift Service Mesh Operator
step "Sail operator installed in both clusters" "kubectl --context kind-cluster01 -n sail-operator logs deploy/sail-operator"
causeway install-operator --context "${CTX_CLUSTER1}"
causeway install-operator --context "${CTX_CLUSTER2}"

# 创建根 CA 证书 (the seed's openssl commands, unchanged)
step "Root CA made with openssl"
mkdir -p "$WALKTHROUGH_DIR/certs"
cd "$WALKTHROUGH_DIR/certs"
openssl genrsa -out root-key.pem 4096
cat >root-ca.conf <<'CONF'
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 4096
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
[ req_dn ]
O = Istio
CN = Root CA
CONF
openssl req -sha256 -new -key root-key.pem \
    -config root-ca.conf \
    -out root-cert.csr
openssl x509 -req -sha256 -days 3650 \
    -signkey root-key.pem \
    -extensions req_ext -extfile root-ca.conf \
    -in root-cert.csr \
    -out root-cert.pem

# 为 East / West 集群创建中间 CA 证书
for location in east west; do
    step "Intermediate CA for $location made with openssl"
    mkdir "$location"
    openssl genrsa -out "$location/ca-key.pem" 4096
    cat >"$location/intermediate.conf" <<CONF
[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
default_bits = 4096
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName=@san
[ san ]
DNS.1 = istiod.istio-system.svc
[ req_dn ]
O = Istio
CN = Intermediate CA
L = $location
CONF
    openssl req -new -config "$location/intermediate.conf" \
        -key "$location/ca-key.pem" \
        -out "$location/cluster-ca.csr"
    openssl x509 -req -sha256 -days 3650 \
        -CA root-cert.pem \
        -CAkey root-key.pem -CAcreateserial \
        -extensions req_ext -extfile "$location/intermediate.conf" \
        -in "$location/cluster-ca.csr" \
        -out "$location/ca-cert.pem"
    cat "$location/ca-cert.pem" root-cert.pem >"$location/cert-chain.pem" && cp root-cert.pem "$location"
done

# 将证书应用于多集群拓扑中的 East / West 集群
apply_certificates() {
    local context=$1 location=$2 network=$3
    step "$location's cacerts and network ($network) applied to $context"
    kubectl get namespace istio-system --context "$context" || kubectl create namespace istio-system --context "$context"
    kubectl --context "$context" label namespace istio-system topology.istio.io/network="$network"
    kubectl get secret -n istio-system --context "$context" cacerts || kubectl create secret generic cacerts -n istio-system --context "$context" \
        --from-file="$location/ca-cert.pem" \
        --from-file="$location/ca-key.pem" \
        --from-file="$location/root-cert.pem" \
        --from-file="$location/cert-chain.pem"
}
apply_certificates "${CTX_CLUSTER1}" east network1
apply_certificates "${CTX_CLUSTER2}" west network2

# 您已创建 Istio 容器网络接口 (CNI) 资源 (a prerequisite of the seed)
for context in "${CTX_CLUSTER1}" "${CTX_CLUSTER2}"; do
    step "IstioCNI created in $context" "kubectl --context $context get istiocni default -o yaml"
    kubectl get namespace istio-cni --context "$context" || kubectl create namespace istio-cni --context "$context"
    cat <<YAML | kubectl --context "$context" apply -f -
apiVersion: sailoperator.io/v1
kind: IstioCNI
metadata:
  name: default
spec:
  version: v${ISTIO_VERSION}
  namespace: istio-cni
YAML
done

# 在 East / West 集群上安装 Istio
install_istio() {
    local context=$1 cluster=$2 network=$3 gateway=$4
    step "Istio resource created in $context and Ready" "kubectl --context $context get istio default -o yaml"
    cat <<YAML | kubectl --context "$context" apply -f -
apiVersion: sailoperator.io/v1alpha1
kind: Istio
metadata:
  name: default
spec:
  version: v${ISTIO_VERSION}
  namespace: istio-system
  values:
    # Not in the seed: the access log the walkthrough's last check reads.
    meshConfig:
      accessLogFile: /dev/stdout
      accessLogEncoding: JSON
    global:
      meshID: mesh1
      multiCluster:
        clusterName: $cluster
      network: $network
YAML
    kubectl --context "$context" wait --for condition=Ready istio/default --timeout=3m
    step "East-west gateway created in $context, services exposed" \
        "kubectl --context $context -n istio-system describe pods -l istio=eastwestgateway"
    kubectl --context "$context" apply -f "$samples/sail/$gateway"
    kubectl --context "$context" apply -n istio-system -f "$samples/expose-services.yaml"
}
install_istio "${CTX_CLUSTER1}" cluster1 network1 east-west-gateway-net1.yaml
wait_for_east_west_gateway cluster01
install_istio "${CTX_CLUSTER2}" cluster2 network2 east-west-gateway-net2.yaml
wait_for_east_west_gateway cluster02

# 远程密钥: each control plane reads the other cluster
step "Remote secrets installed in both clusters" "causeway remote-clusters --context kind-cluster01"
causeway create-remote-secret \
    --context="${CTX_CLUSTER2}" \
    --name=cluster2 |
    kubectl --context="${CTX_CLUSTER1}" apply -f -
causeway create-remote-secret \
    --context="${CTX_CLUSTER1}" \
    --name=cluster1 |
    kubectl --context="${CTX_CLUSTER2}" apply -f -
expect_remote_clusters_synced cluster01 cluster2
expect_remote_clusters_synced cluster02 cluster1

# 在 East / West 集群上部署示例应用程序
deploy_sample() {
    local context=$1 version=$2
    step "helloworld-$version and sleep deployed in $context, available" "kubectl --context $context -n sample describe pods"
    kubectl --context "$context" get namespace sample || kubectl --context="$context" create namespace sample
    kubectl --context="$context" label namespace sample istio-injection=enabled
    kubectl --context="$context" apply -f "$samples/helloworld.yaml" -l service=helloworld -n sample
    kubectl --context="$context" apply -f "$samples/helloworld.yaml" -l version="$version" -n sample
    kubectl --context="$context" apply -f "$samples/sleep.yaml" -n sample
    # The seed's waits, with a longer limit than kubectl's 30 s for a loaded CI machine.
    kubectl --context="$context" wait --for condition=available -n sample deployment/helloworld-"$version" --timeout=120s
    kubectl --context="$context" wait --for condition=available -n sample deployment/sleep --timeout=120s
}
deploy_sample "${CTX_CLUSTER1}" v1
deploy_sample "${CTX_CLUSTER2}" v2

# 验证流量 (the seed sends its ten requests with `exec deploy/sleep ... curl -sS`)
expect_no_direct_path cluster01 cluster02
verify_cross_cluster_traffic gateway
done_message
