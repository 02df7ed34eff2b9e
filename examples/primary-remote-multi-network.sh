#!/usr/bin/env bash
# Seed 001 "非扁平网络单控制面(跨网络主从架构)": one primary and one remote on two networks.
# cluster01's control plane serves both clusters through its east-west gateway (expose-istiod);
# requests to the other cluster's pods go through that cluster's east-west gateway.
# Usage: examples/primary-remote-multi-network.sh   (WALKTHROUGH_DIR, CAUSEWAY, VERBOSE: see lib.sh)
source "$(dirname "$0")/lib.sh"
topology=$samples/topologies/primary-remote-multi-network

start_over
# 二、准备工作 / 创建两个集群
create_cluster cluster01
create_cluster cluster02
# 配置信任关系 / 创建cacerts Secret
make_cacerts cluster01 cluster02

# 为 cluster01 设置默认网络
step "cluster01's network set to network1"
kubectl --context="kind-cluster01" label namespace istio-system topology.istio.io/network=network1

# 将 cluster01 设为主集群
step "Control plane installed in cluster01 (EXTERNAL_ISTIOD)" "kubectl --context kind-cluster01 -n istio-system logs deploy/istiod"
causeway install --set values.pilot.env.EXTERNAL_ISTIOD=true --context="kind-cluster01" -f "$topology/cluster01.yaml" -y

# 在 cluster01 安装东西向网关
step "East-west gateway installed in cluster01" "kubectl --context kind-cluster01 -n istio-system describe pods -l istio=eastwestgateway"
causeway install --context=kind-cluster01 -y -f "$samples/topologies/eastwest-gateway-cluster01-network1.yaml"
wait_for_east_west_gateway cluster01

# 开放 cluster01 控制平面
step "cluster01's control plane exposed on its gateway"
kubectl apply --context="kind-cluster01" -n istio-system -f "$samples/expose-istiod.yaml"

# 为 cluster02 设置控制平面集群
step "cluster02 names cluster01 as its control plane"
kubectl --context="kind-cluster02" annotate namespace istio-system topology.istio.io/controlPlaneClusters=cluster01

# 为 cluster02 设置默认网络
step "cluster02's network set to network2"
kubectl --context="kind-cluster02" label namespace istio-system topology.istio.io/network=network2

# 将 cluster02 设为从集群
step "cluster02 installed as a remote of cluster01" "kubectl --context kind-cluster02 get mutatingwebhookconfigurations -o yaml"
DISCOVERY_ADDRESS=$(discovery_address)
export DISCOVERY_ADDRESS
causeway install --context="kind-cluster02" -f "$(with_discovery_address "$topology/cluster02.yaml")" -y

# 作为 cluster01 的从集群接入 cluster02
step "cluster02 attached: cluster01's control plane reads it" "causeway remote-clusters --context kind-cluster01"
causeway create-remote-secret --context="kind-cluster02" --name=cluster02 |
    kubectl apply -f - --context="kind-cluster01"
expect_remote_clusters_synced cluster01 cluster02

# 在 cluster02 安装东西向网关
step "East-west gateway installed in cluster02" "kubectl --context kind-cluster02 -n istio-system describe pods -l istio=eastwestgateway"
causeway install --context=kind-cluster02 -y -f "$samples/topologies/eastwest-gateway-cluster02-network2.yaml"
wait_for_east_west_gateway cluster02

# 开放 cluster01 和 cluster02 中的服务 (applied to the primary, it opens both gateways)
step "Services exposed on both gateways (applied to the primary)"
kubectl --context="kind-cluster01" apply -n istio-system -f "$samples/expose-services.yaml"

# 验证安装结果
deploy_samples
expect_no_direct_path cluster01 cluster02
verify_cross_cluster_traffic gateway
done_message
