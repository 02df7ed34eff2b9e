#!/usr/bin/env bash
# Seeds 000 "共享控制平面(单一网络)" and 004 "VPN connectivity": one control plane shared at its pod address.
# cluster01 runs the control plane; cluster02 runs only the remote configuration, whose
# selector-less `istiod` Service points at the control plane's pod IP across the flat network
# (the seeds' VPN). Control-plane and workload mTLS are on, the control plane reads cluster02
# through a kubeconfig built by hand from a service-account token, cluster02's helloworld is
# injected by the webhook and its sleep by hand (`kube-inject --injectConfigMapName`). Then what
# the seeds warn about (Istio issue 4822): the control plane's pod is replaced, its address
# changes, and the remote install is run again with the new one, as the seed says to.
# Usage: examples/shared-control-plane.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"

start_over
create_cluster cluster01
create_cluster cluster02
# 控制平面安全性: one root signs both clusters' CAs (the seeds use Istio's sample certs in both)
make_cacerts cluster01 cluster02
# 前提条件: pod CIDRs routable to each other (the seeds' VPN)
connect_flat_network

# The mesh's cluster names are the kubeconfig's, as the seed's kubeconfig step derives them.
PRIMARY_NAME=$(kubectl config view --minify=true --context kind-cluster01 -o jsonpath='{.clusters[].name}')
CLUSTER_NAME=$(kubectl config view --minify=true --context kind-cluster02 -o jsonpath='{.clusters[].name}')

# 主集群: 部署控制平面集群 (control plane and workload mTLS)
step "Control plane installed in cluster01 (mtls, controlPlaneSecurityEnabled, no self-signed CA)" \
    "kubectl --context kind-cluster01 -n istio-system logs deploy/istiod"
causeway manifest apply --context kind-cluster01 -y \
    --set values.global.mtls.enabled=true \
    --set values.security.selfSigned=false \
    --set values.global.controlPlaneSecurityEnabled=true \
    --set values.global.multiCluster.clusterName="$PRIMARY_NAME" \
    --set meshConfig.accessLogFile=/dev/stdout --set meshConfig.accessLogEncoding=JSON

# 设置环境变量: the control plane's pod addresses (Mixer's are empty: there is no Mixer)
step "Control plane pod addresses read"
control_plane_addresses() {
    PILOT_POD_IP=$(kubectl --context kind-cluster01 -n istio-system get pod -l istio=pilot -o jsonpath='{.items[0].status.podIP}')
    POLICY_POD_IP=$(kubectl --context kind-cluster01 -n istio-system get pod -l istio-mixer-type=policy -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
    TELEMETRY_POD_IP=$(kubectl --context kind-cluster01 -n istio-system get pod -l istio-mixer-type=telemetry -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
    STATSD_POD_IP=$(kubectl --context kind-cluster01 -n istio-system get pod -l istio=statsd-prom-bridge -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
    ZIPKIN_POD_IP=$(kubectl --context kind-cluster01 -n istio-system get pod -l app=jaeger -o jsonpath='{range .items[*]}{.status.podIP}{end}')
    [ -n "$PILOT_POD_IP" ]
}
control_plane_addresses

# 安装 Istio 远程组件 (seed 000's 部署示例, with 004's Mixer-era statsd and zipkin settings)
install_remote() {
    causeway manifest apply --context kind-cluster02 -y \
        --set profile=remote \
        --set values.global.mtls.enabled=true \
        --set values.security.selfSigned=false \
        --set values.global.controlPlaneSecurityEnabled=true \
        --set values.global.createRemoteSvcEndpoints=true \
        --set values.global.remotePilotCreateSvcEndpoint=true \
        --set values.global.remotePilotAddress="${PILOT_POD_IP}" \
        --set values.global.remotePolicyAddress="${POLICY_POD_IP}" \
        --set values.global.remoteTelemetryAddress="${TELEMETRY_POD_IP}" \
        --set values.global.proxy.envoyStatsd.enabled=true \
        --set values.global.proxy.envoyStatsd.host="${STATSD_POD_IP}" \
        --set values.global.tracer.zipkin.address="${ZIPKIN_POD_IP}:9411" \
        --set gateways.enabled=false \
        --set autoInjection.enabled=true \
        --set values.global.multiCluster.clusterName="$CLUSTER_NAME" \
        --set meshConfig.accessLogFile=/dev/stdout --set meshConfig.accessLogEncoding=JSON \
        --set values.istiodRemote.injectionPath="/inject/cluster/$CLUSTER_NAME/net/network1"
}
step "Remote configuration installed in cluster02, pointing at $PILOT_POD_IP" \
    "kubectl --context kind-cluster02 -n istio-system get svc,endpoints istiod -o wide"
kubectl --context kind-cluster02 create namespace istio-system --dry-run=client -o yaml | kubectl --context kind-cluster02 apply -f -
# Today's control planes write into a remote cluster only where its istio-system names them.
kubectl --context kind-cluster02 annotate namespace istio-system topology.istio.io/controlPlaneClusters="$PRIMARY_NAME" --overwrite
install_remote
kubectl --context kind-cluster02 -n istio-system get endpoints istiod -o wide

# 为远程集群创建配置文件: the istio-reader-service-account's token, in a kubeconfig built by hand
step "Remote kubeconfig built by hand from istio-reader-service-account's token"
WORK_DIR=$WALKTHROUGH_DIR
export KUBECFG_FILE=${WORK_DIR}/${CLUSTER_NAME}
NAMESPACE=istio-system
SERVICE_ACCOUNT=istio-reader-service-account
# Kubernetes 1.24+ makes no token Secret for a service account: make the one the seed reads, and
# list it on the account as the old token controller did.
cat <<YAML | kubectl --context kind-cluster02 apply -f -
apiVersion: v1
kind: Secret
metadata:
  name: ${SERVICE_ACCOUNT}-token
  namespace: ${NAMESPACE}
  annotations:
    kubernetes.io/service-account.name: ${SERVICE_ACCOUNT}
type: kubernetes.io/service-account-token
YAML
kubectl --context kind-cluster02 -n ${NAMESPACE} patch sa ${SERVICE_ACCOUNT} -p "{\"secrets\":[{\"name\":\"${SERVICE_ACCOUNT}-token\"}]}"
for _ in $(seq 50); do
    kubectl --context kind-cluster02 get secret ${SERVICE_ACCOUNT}-token -n ${NAMESPACE} -o jsonpath="{.data['token']}" | grep -q . && break
    sleep 0.1
done
SECRET_NAME=$(kubectl --context kind-cluster02 get sa ${SERVICE_ACCOUNT} -n ${NAMESPACE} -o jsonpath='{.secrets[].name}')
CA_DATA=$(kubectl --context kind-cluster02 get secret ${SECRET_NAME} -n ${NAMESPACE} -o jsonpath="{.data['ca\.crt']}")
TOKEN=$(kubectl --context kind-cluster02 get secret ${SECRET_NAME} -n ${NAMESPACE} -o jsonpath="{.data['token']}" | base64 --decode)
# The seed's SERVER is the kubeconfig's; the control plane runs in a pod, which reaches the API
# server at the node's address (seed 001's `kubectl config set-cluster ... --server`).
SERVER=https://$(node_address cluster02):6443
cat <<EOF >"${KUBECFG_FILE}"
apiVersion: v1
clusters:
   - cluster:
       certificate-authority-data: ${CA_DATA}
       server: ${SERVER}
     name: ${CLUSTER_NAME}
contexts:
   - context:
       cluster: ${CLUSTER_NAME}
       user: ${CLUSTER_NAME}
     name: ${CLUSTER_NAME}
current-context: ${CLUSTER_NAME}
kind: Config
preferences: {}
users:
   - name: ${CLUSTER_NAME}
     user:
       token: ${TOKEN}
EOF

# 实例化凭证: the secret, labelled, in the control plane's cluster
step "cluster02's credentials instantiated in cluster01" "causeway remote-clusters --context kind-cluster01"
kubectl --context kind-cluster01 create secret generic "${CLUSTER_NAME}" --from-file "${KUBECFG_FILE}" -n ${NAMESPACE}
kubectl --context kind-cluster01 label secret "${CLUSTER_NAME}" istio/multiCluster=true -n ${NAMESPACE}
expect_remote_clusters_synced cluster01 "$CLUSTER_NAME"

# The samples: webhook injection in both clusters, except cluster02's sleep, injected by hand
# (seed 000's 手动 sidecar 注入示例: kube-inject with the remote cluster's ConfigMaps).
step "Samples deployed: helloworld v1 in cluster01, v2 in cluster02 (webhook), sleep in both (cluster02's by kube-inject)" \
    "kubectl --context kind-cluster02 -n sample describe pods"
for cluster in cluster01 cluster02; do
    kubectl create --context="kind-$cluster" namespace sample
    kubectl label --context="kind-$cluster" namespace sample istio-injection=enabled
    kubectl apply --context="kind-$cluster" -f "$samples/helloworld.yaml" -l service=helloworld -n sample
done
kubectl apply --context="kind-cluster01" -f "$samples/helloworld.yaml" -l version=v1 -n sample
kubectl apply --context="kind-cluster02" -f "$samples/helloworld.yaml" -l version=v2 -n sample
kubectl apply --context="kind-cluster01" -f "$samples/sleep.yaml" -n sample
ORIGINAL_SVC_MANIFEST=$samples/sleep.yaml
causeway kube-inject --context kind-cluster02 --injectConfigMapName istio-sidecar-injector --meshConfigMapName istio -f ${ORIGINAL_SVC_MANIFEST} |
    kubectl --context kind-cluster02 apply -n sample -f -
step "Sample pods ready, each with its sidecar" "kubectl --context kind-cluster02 -n sample get pods; causeway proxy-status --context kind-cluster01"
for cluster in cluster01 cluster02; do
    kubectl --context "kind-$cluster" -n sample wait --for=condition=Ready pods --all --timeout=120s
done
verify_cross_cluster_traffic direct

# 部署注意事项 (Istio issue 4822): the control plane's pod is replaced and its address changes;
# cluster02's istiod endpoints still name the old one until the remote install runs again.
step "Control plane pod replaced: cluster02 still points at the old address" \
    "kubectl --context kind-cluster02 -n istio-system get endpoints istiod -o wide"
old_address=$PILOT_POD_IP
kubectl --context kind-cluster01 -n istio-system delete pod -l istio=pilot --wait=true
kubectl --context kind-cluster01 -n istio-system wait --for=condition=Ready pods -l istio=pilot --timeout=120s
control_plane_addresses
remote_endpoint=$(kubectl --context kind-cluster02 -n istio-system get endpoints istiod -o jsonpath='{.subsets[0].addresses[0].ip}')
finish_step
say "" "istiod moved from $old_address to $PILOT_POD_IP; cluster02's istiod endpoints still say $remote_endpoint"
[ "$remote_endpoint" = "$old_address" ]
step "Remote install run again with the new address (the seed's fix); cluster02 follows" \
    "kubectl --context kind-cluster02 -n istio-system get endpoints istiod -o wide"
install_remote
[ "$(kubectl --context kind-cluster02 -n istio-system get endpoints istiod -o jsonpath='{.subsets[0].addresses[0].ip}')" = "$PILOT_POD_IP" ]
# New pods in cluster02 get their sidecar and certificate from the control plane's new address.
kubectl --context kind-cluster02 -n sample delete pod -l app=helloworld --wait=true
kubectl --context kind-cluster02 -n sample wait --for=condition=Ready pods --all --timeout=120s
# The access logs were read before: the replaced pods took theirs with them.
verify_ten_requests
done_message
