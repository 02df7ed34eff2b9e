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
done_message
