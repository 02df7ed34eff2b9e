#!/usr/bin/env bash
# Seed 001 "扁平网络单控制面(主从架构)": one primary and one remote on one flat network.
# cluster01's control plane serves both clusters: cluster02's sidecars reach it through cluster01's
# east-west gateway (expose-istiod), its injection webhook calls it, and it reads cluster02's API
# server through a remote secret. The nodes route each other's pod subnets.
# Usage: examples/primary-remote.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
topology=$samples/topologies/primary-remote

start_over
# 二、准备工作 / 创建两个集群
create_cluster cluster01
create_cluster cluster02
# 配置信任关系 / 创建cacerts Secret
make_cacerts cluster01 cluster02

# 将 cluster01 设为主集群
step "Control plane installed in cluster01 (EXTERNAL_ISTIOD)" "kubectl --context kind-cluster01 -n istio-system logs deploy/istiod"
causeway install --set values.pilot.env.EXTERNAL_ISTIOD=true --context="kind-cluster01" -f "$topology/cluster01.yaml" -y

# 在 cluster01 安装东西向网关
step "East-west gateway installed in cluster01" "kubectl --context kind-cluster01 -n istio-system describe pods -l istio=eastwestgateway"
causeway install --context=kind-cluster01 -y -f "$samples/topologies/eastwest-gateway-cluster01-network1.yaml"
wait_for_east_west_gateway cluster01

# 在 cluster01 中开放控制平面
step "cluster01's control plane exposed on its gateway"
kubectl apply --context=kind-cluster01 -f "$samples/expose-istiod.yaml"

# 设置集群 cluster02 的控制平面
step "cluster02 names cluster01 as its control plane"
kubectl --context="kind-cluster02" annotate namespace istio-system topology.istio.io/controlPlaneClusters=cluster01

# 将 cluster02 设为从集群
step "cluster02 installed as a remote of cluster01" "kubectl --context kind-cluster02 get mutatingwebhookconfigurations -o yaml"
DISCOVERY_ADDRESS=$(discovery_address)
export DISCOVERY_ADDRESS
causeway install --context="kind-cluster02" -f "$(with_discovery_address "$topology/cluster02.yaml")" -y

# 附加 cluster02 作为 cluster01 的从集群
step "cluster02 attached: cluster01's control plane reads it" "causeway remote-clusters --context kind-cluster01"
causeway create-remote-secret --context="kind-cluster02" --name=cluster02 |
    kubectl apply -f - --context="kind-cluster01"
expect_remote_clusters_synced cluster01 cluster02

# 两个集群网络打通
connect_flat_network

# 验证安装结果
deploy_samples
verify_cross_cluster_traffic direct
done_message
