#!/usr/bin/env bash
# Seed 001 "非扁平网络多控制面(跨网络多主架构)": two primaries on two networks.
# Each cluster runs its own control plane; the clusters' pods cannot reach each other, so requests to the other
# cluster go through its east-west gateway (15443, mTLS passed through by SNI).
# Usage: examples/multi-primary-multi-network.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
topology=$samples/topologies/multi-primary-multi-network

start_over
# 二、准备工作 / 创建两个集群
create_cluster cluster01
create_cluster cluster02
# 配置信任关系 / 创建cacerts Secret
make_cacerts cluster01 cluster02

# 为 cluster01 设置缺省网络
step "cluster01's network set to network1"
kubectl --context="kind-cluster01" label namespace istio-system topology.istio.io/network=network1

# 将 cluster01 设为主集群
step "Control plane installed in cluster01" "kubectl --context kind-cluster01 -n istio-system logs deploy/istiod"
causeway install --context="kind-cluster01" -f "$topology/cluster01.yaml" -y

# 在 cluster01 安装东西向网关 (gen-eastwest-gateway.sh's output is the sample file)
step "East-west gateway installed in cluster01" "kubectl --context kind-cluster01 -n istio-system describe pods -l istio=eastwestgateway"
causeway install --context=kind-cluster01 -y -f "$samples/topologies/eastwest-gateway-cluster01-network1.yaml"
wait_for_east_west_gateway cluster01

# 开放 cluster01 中的服务
step "cluster01's services exposed on its gateway"
kubectl --context="kind-cluster01" apply -n istio-system -f "$samples/expose-services.yaml"

# 为 cluster02 设置缺省网络
step "cluster02's network set to network2"
kubectl --context="kind-cluster02" label namespace istio-system topology.istio.io/network=network2

# 将 cluster02 设为主集群
step "Control plane installed in cluster02" "kubectl --context kind-cluster02 -n istio-system logs deploy/istiod"
causeway install --context="kind-cluster02" -f "$topology/cluster02.yaml" -y

# 在 cluster02 安装东西向网关
step "East-west gateway installed in cluster02" "kubectl --context kind-cluster02 -n istio-system describe pods -l istio=eastwestgateway"
causeway install --context=kind-cluster02 -y -f "$samples/topologies/eastwest-gateway-cluster02-network2.yaml"
wait_for_east_west_gateway cluster02

# 开放 cluster02 中的服务
step "cluster02's services exposed on its gateway"
kubectl --context="kind-cluster02" apply -n istio-system -f "$samples/expose-services.yaml"

# 启用端点发现
step "Endpoint discovery enabled: each control plane reads the other cluster" "causeway remote-clusters --context kind-cluster01"
causeway create-remote-secret --context="kind-cluster01" --name=cluster01 |
    kubectl apply -f - --context="kind-cluster02"
causeway create-remote-secret --context="kind-cluster02" --name=cluster02 |
    kubectl apply -f - --context="kind-cluster01"
expect_remote_clusters_synced cluster01 cluster02
expect_remote_clusters_synced cluster02 cluster01

# 验证安装结果
deploy_samples
expect_no_direct_path cluster01 cluster02
verify_cross_cluster_traffic gateway
done_message
