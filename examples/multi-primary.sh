#!/usr/bin/env bash
# Seed 001 "扁平网络多控制面(多主架构)": two primaries on one flat network.
# Each cluster runs its own control plane and reads the other cluster's API server; the nodes
# route each other's pod subnets, so requests go straight to the pod in the other cluster.
# Usage: examples/multi-primary.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
topology=$samples/topologies/multi-primary

start_over
# 二、准备工作 / 创建两个集群
create_cluster cluster01
create_cluster cluster02
# 配置信任关系 / 创建cacerts Secret
make_cacerts cluster01 cluster02

# 将 cluster01 设为主集群
step "Control plane installed in cluster01" "kubectl --context kind-cluster01 -n istio-system logs deploy/istiod"
causeway install --context="kind-cluster01" -f "$topology/cluster01.yaml" -y

# 将 cluster02 设为主集群
step "Control plane installed in cluster02" "kubectl --context kind-cluster02 -n istio-system logs deploy/istiod"
causeway install --context="kind-cluster02" -f "$topology/cluster02.yaml" -y

# 开启端点发现
step "Endpoint discovery enabled: each control plane reads the other cluster" "causeway remote-clusters --context kind-cluster01"
causeway create-remote-secret --context="kind-cluster01" --name=cluster01 |
    kubectl apply -f - --context="kind-cluster02"
causeway create-remote-secret --context="kind-cluster02" --name=cluster02 |
    kubectl apply -f - --context="kind-cluster01"
expect_remote_clusters_synced cluster01 cluster02
expect_remote_clusters_synced cluster02 cluster01

# 两个集群网络打通
connect_flat_network

# 验证安装结果
deploy_samples
verify_cross_cluster_traffic direct

# Beyond the seed: a ServiceEntry whose endpoints are the pods its workloadSelector picks, in
# every cluster. Each primary reads its own cluster's configuration, so both get the entry. This
# topology's sidecars do not proxy DNS (ISTIO_META_DNS_CAPTURE is off), so the entry carries an
# address and curl is told it, as an application would find it in its own configuration.
step "ServiceEntry with a workloadSelector reaches the selected pods of both clusters over mTLS" \
    "causeway proxy-status --context kind-cluster01"
for cluster in cluster01 cluster02; do
    cat <<YAML | kubectl apply --context="kind-$cluster" -n sample -f -
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: helloworld-selected
spec:
  hosts:
  - helloworld.selected.example
  location: MESH_INTERNAL
  ports:
  - name: http
    number: 5000
    protocol: HTTP
  addresses:
  - 240.0.0.10
  resolution: STATIC
  workloadSelector:
    labels:
      app: helloworld
YAML
done
sleep_pod=$(kubectl get pod --context=kind-cluster01 -n sample -l app=sleep -o jsonpath='{.items[0].metadata.name}')
answers=""
for _ in $(seq 50); do
    answers=$(for i in $(seq 10); do
        kubectl exec --context=kind-cluster01 -n sample -c sleep "$sleep_pod" -- curl -s --resolve helloworld.selected.example:5000:240.0.0.10 helloworld.selected.example:5000/hello || true
    done)
    grep -q 'Hello version: v1' <<<"$answers" && grep -q 'Hello version: v2' <<<"$answers" && break
    sleep 0.2
done
grep -q 'Hello version: v1' <<<"$answers"
grep -q 'Hello version: v2' <<<"$answers"
# The client's sidecar spoke Istio mTLS to the pods (they are injected): the server's sidecar
# saw the entry's SNI.
kubectl logs --context=kind-cluster02 -n sample deploy/helloworld-v2 -c istio-proxy |
    grep '"authority":"helloworld.selected.example:5000"' |
    grep -q '"requested_server_name":"outbound_.5000_._.helloworld.selected.example"'
finish_step
say "" "helloworld.selected.example (workloadSelector app=helloworld) answered from both clusters:" "$answers"
done_message
