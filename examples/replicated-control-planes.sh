#!/usr/bin/env bash
# Seed 002 "多集群 Kubernetes 环境下的 Istio 服务网格": two independent control planes sharing only the root CA.
# Nothing joins the clusters but a ServiceEntry: cluster01's sleep (namespace foo) calls
# `httpbin.bar.global`, which the entry sends to cluster02's ingress gateway on 15443, and the
# gateway passes the mTLS connection to httpbin in cluster02's bar. Then a MESH_EXTERNAL entry
# reaches a pod without a sidecar in plain text.
# Usage: examples/replicated-control-planes.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
replicated=$samples/replicated
CTX_CLUSTER1=kind-cluster01
CTX_CLUSTER2=kind-cluster02

start_over
create_cluster cluster01
create_cluster cluster02
# 安装 Istio: the shared root's intermediate CAs as cacerts (the seed uses Istio's sample certs)
make_cacerts cluster01 cluster02

# istioctl manifest apply -f .../values-istio-multicluster-gateways.yaml, in both clusters
for context in "${CTX_CLUSTER1}" "${CTX_CLUSTER2}"; do
    step "Control plane and multicluster ingress gateway installed in $context" \
        "kubectl --context $context -n istio-system get pods"
    causeway install --context "$context" -y -f "$replicated/values-istio-multicluster-gateways.yaml" \
        --set values.global.multiCluster.clusterName="${context#kind-}"
    kubectl --context "$context" apply -f "$replicated/multicluster-gateway.yaml"
done

# 部署示例微服务: sleep in cluster-1's foo, httpbin in cluster-2's bar
step "sleep deployed in cluster01's foo" "kubectl --context kind-cluster01 -n foo describe pods"
kubectl create --context="${CTX_CLUSTER1}" namespace foo
kubectl label --context="${CTX_CLUSTER1}" namespace foo istio-injection=enabled
kubectl apply --context="${CTX_CLUSTER1}" -n foo -f "$samples/sleep.yaml"
step "httpbin deployed in cluster02's bar" "kubectl --context kind-cluster02 -n bar describe pods"
kubectl create --context="${CTX_CLUSTER2}" namespace bar
kubectl label --context="${CTX_CLUSTER2}" namespace bar istio-injection=enabled
kubectl apply --context="${CTX_CLUSTER2}" -n bar -f "$samples/httpbin.yaml"
step "Pods ready, each with its sidecar"
kubectl --context="${CTX_CLUSTER1}" -n foo wait --for=condition=Ready pods --all --timeout=120s
kubectl --context="${CTX_CLUSTER2}" -n bar wait --for=condition=Ready pods --all --timeout=120s
SLEEP_POD=$(kubectl get --context="${CTX_CLUSTER1}" -n foo pod -l app=sleep -o jsonpath='{.items..metadata.name}')

# 创建服务条目
step "ServiceEntry httpbin.bar.global created in cluster01" "kubectl --context kind-cluster01 -n foo get serviceentry httpbin-bar -o yaml"
CLUSTER2_GW_ADDR=$(kubectl get --context="${CTX_CLUSTER2}" svc --selector=app=istio-ingressgateway \
    -n istio-system -o jsonpath='{.items[0].status.loadBalancer.ingress[0].ip}')
[ -n "$CLUSTER2_GW_ADDR" ]
sed "s/\${CLUSTER2_GW_ADDR}/$CLUSTER2_GW_ADDR/" "$replicated/httpbin-bar-serviceentry.yaml" |
    kubectl apply --context="${CTX_CLUSTER1}" -n foo -f -

# 测试服务: the seed's curl -I, answered 200 with x-envoy-upstream-service-time
step "httpbin.bar.global answers from cluster01's sleep" "causeway proxy-status --context kind-cluster01"
headers=""
for _ in $(seq 50); do
    headers=$(kubectl exec --context="${CTX_CLUSTER1}" "$SLEEP_POD" -n foo -c sleep -- curl -sI httpbin.bar.global:8000/headers || true)
    grep -q '^HTTP/1.1 200' <<<"$headers" && break
    sleep 0.2
done
say "" "\$ kubectl exec --context=\$CTX_CLUSTER1 \$SLEEP_POD -n foo -c sleep -- curl -I httpbin.bar.global:8000/headers" "$headers"
grep -q '^HTTP/1.1 200' <<<"$headers"
grep -qi '^x-envoy-upstream-service-time: ' <<<"$headers"

expect_proxies_synced cluster01 cluster02
summarise_access_logs gateway foo

# expect_entry_reached URL CLUSTER UPSTREAM: cluster01's sleep gets 200 from URL (retried while
# the new entry reaches its sidecar), and the sidecar logged it through CLUSTER to UPSTREAM.
expect_entry_reached() {
    answer=""
    for _ in $(seq 50); do
        answer=$(kubectl exec --context="${CTX_CLUSTER1}" "$SLEEP_POD" -n foo -c sleep -- curl -s -o /dev/null -w '%{http_code}' "$1" || true)
        [ "$answer" = 200 ] && break
        sleep 0.2
    done
    [ "$answer" = 200 ]
    kubectl logs --context="${CTX_CLUSTER1}" -n foo "$SLEEP_POD" -c istio-proxy |
        grep -F "\"upstream_cluster\":\"$2\"" | grep -qF "\"upstream_host\":\"$3\""
}

# Beyond the seed: a MESH_EXTERNAL entry to a pod outside the mesh, reached without mTLS.
step "MESH_EXTERNAL ServiceEntry reaches a pod without a sidecar, in plain text" \
    "kubectl --context kind-cluster01 -n foo logs deploy/sleep -c istio-proxy"
kubectl create --context="${CTX_CLUSTER1}" namespace outside
kubectl apply --context="${CTX_CLUSTER1}" -n outside -f "$samples/httpbin.yaml"
kubectl --context="${CTX_CLUSTER1}" -n outside wait --for=condition=Ready pods --all --timeout=60s
outside_ip=$(kubectl get --context="${CTX_CLUSTER1}" -n outside pod -l app=httpbin -o jsonpath='{.items[0].status.podIP}')
cat <<YAML | kubectl apply --context="${CTX_CLUSTER1}" -n foo -f -
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-outside
spec:
  hosts:
  - httpbin.outside.example
  location: MESH_EXTERNAL
  ports:
  - name: http
    number: 8000
    targetPort: 80
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: $outside_ip
YAML
# The client's sidecar sent it to the pod itself, without TLS: the pod has no sidecar to end it.
expect_entry_reached httpbin.outside.example:8000/headers "outbound|8000||httpbin.outside.example" "$outside_ip:80"
finish_step
say "" "MESH_EXTERNAL httpbin.outside.example:8000 -> $outside_ip:80 answered $answer"

# Beyond the seed: `resolution: DNS` with an endpoint given by name. The sidecar resolves the
# name itself (a STRICT_DNS cluster) and connects to what it resolves to: here the Service's
# ClusterIP.
step "DNS ServiceEntry: the sidecar resolves its endpoint's name" \
    "kubectl --context kind-cluster01 -n foo logs deploy/sleep -c istio-proxy"
cat <<YAML | kubectl apply --context="${CTX_CLUSTER1}" -n foo -f -
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-by-name
spec:
  hosts:
  - httpbin-by-name.outside.example
  location: MESH_EXTERNAL
  ports:
  - name: http
    number: 8000
    protocol: HTTP
  resolution: DNS
  endpoints:
  - address: httpbin.outside.svc.cluster.local
YAML
outside_vip=$(kubectl get --context="${CTX_CLUSTER1}" -n outside service httpbin -o jsonpath='{.spec.clusterIP}')
expect_entry_reached httpbin-by-name.outside.example:8000/headers "outbound|8000||httpbin-by-name.outside.example" "$outside_vip:8000"
finish_step
say "" "DNS httpbin-by-name.outside.example:8000 -> httpbin.outside.svc.cluster.local ($outside_vip:8000) answered $answer"

# Beyond the seed: `resolution: NONE` with an address, for a wildcard host. Connections to the
# address keep their destination; the sidecar's DNS proxy answers every name under the wildcard
# with the address, and the access log names the entry.
step "NONE ServiceEntry for a wildcard: traffic to its address keeps its destination, named for the entry" \
    "kubectl --context kind-cluster01 -n foo logs deploy/sleep -c istio-proxy"
cat <<YAML | kubectl apply --context="${CTX_CLUSTER1}" -n foo -f -
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-as-sent
spec:
  hosts:
  - "*.as-sent.outside.example"
  addresses:
  - $outside_ip
  location: MESH_EXTERNAL
  ports:
  - name: tcp
    number: 80
    protocol: TCP
  resolution: NONE
YAML
expect_entry_reached httpbin.as-sent.outside.example/headers "outbound|80||*.as-sent.outside.example" "$outside_ip:80"
finish_step
say "" "NONE httpbin.as-sent.outside.example:80 (*.as-sent.outside.example) -> $outside_ip:80 as sent answered $answer"
done_message
