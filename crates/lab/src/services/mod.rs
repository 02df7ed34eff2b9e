//! What makes a lab cluster's Services reachable, run by the cluster's process beside its kubelet:
//! kube-proxy (each node's rules follow the Services and their EndpointSlices), metallb (layer-2
//! LoadBalancer addresses from the cluster's `IPAddressPool`s, answered on the node), and the
//! cluster DNS behind the `kube-dns` Service.

pub mod dns;
pub mod load_balancers;
pub mod proxy_rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::apiserver::events::{self, EventType, Reporter};
use crate::apiserver::resources::id_of;
use crate::apiserver::routing::Target;
use crate::apiserver::state::ApiState;
use crate::apiserver::store::{Event, StoredObject};
use crate::apiserver::writes;
use crate::netns::Netns;
use crate::network::NODE_INTERFACE;
use dns::{Directory, ServiceRecord};
use load_balancers::{Pool, Request};
use proxy_rules::{ServicePort, ServiceView};

/// Changes are gathered this long before the node's rules are written again.
const SETTLE: Duration = Duration::from_millis(20);
pub const DNS_PORT: u16 = 53;
const METALLB_NAMESPACE: &str = "metallb-system";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("cannot create the cluster's {what}: {reason}")]
    Addon { what: &'static str, reason: String },
}

/// Where a cluster's Services are routed.
#[derive(Clone)]
pub struct ServicesConfig {
    pub node: Netns,
    pub node_name: String,
    pub node_address: Ipv4Addr,
    pub lab_subnet: Ipv4Net,
    pub dns_address: Ipv4Addr,
    /// A pool from `create-cluster --load-balancer-pool`.
    pub load_balancer_pool: Option<String>,
}

pub struct ServiceRouting {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    dns: tokio::task::JoinHandle<()>,
}

impl ServiceRouting {
    /// Creates the cluster's addons (`kube-dns`, `metallb-system`), starts the DNS on the node,
    /// and keeps the node's service routing up to date from then on.
    pub fn start(
        state: Arc<ApiState>,
        config: ServicesConfig,
        node_runtime: &tokio::runtime::Handle,
    ) -> Result<ServiceRouting, ServicesError> {
        create_addons(&state, &config)?;
        let directory: Arc<dyn Directory> = Arc::new(StoreDirectory {
            state: state.clone(),
        });
        let address = SocketAddr::from((config.node_address, DNS_PORT));
        let dns = node_runtime.spawn(async move {
            if let Err(error) = dns::serve(address, directory).await {
                tracing::error!(%address, %error, "the cluster DNS stopped");
            }
        });
        let (stop, stopping) = watch::channel(false);
        let (changes, _) = state.store.subscribe();
        let task = tokio::spawn(run(state, config, changes, stopping));
        Ok(ServiceRouting {
            stop,
            task: Some(task),
            dns,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.dns.abort();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn create_addons(state: &ApiState, config: &ServicesConfig) -> Result<(), ServicesError> {
    let fail = |what: &'static str| {
        move |error: crate::apiserver::status::ApiError| ServicesError::Addon {
            what,
            reason: error.to_string(),
        }
    };
    let dns_ip = config.dns_address.to_string();
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {
            "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": dns_ip, "clusterIPs": [dns_ip], "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]},
    });
    writes::create_if_absent(
        state,
        &Target::collection(id_of("", "Service"), "kube-system"),
        service,
    )
    .map_err(fail("kube-dns Service"))?;
    // The DNS listens on the node: its endpoint is the node's address, in a slice of its own that
    // the endpoints controller leaves alone (the Service has no selector).
    let node = config.node_address.to_string();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                     "labels": {SERVICE_NAME_LABEL: "kube-dns", "endpointslice.kubernetes.io/managed-by": "causeway-lab"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node], "conditions": {"ready": true}, "nodeName": config.node_name}],
        "ports": [{"name": "dns", "port": DNS_PORT, "protocol": "UDP"}, {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP"}],
    });
    let slices = id_of("discovery.k8s.io", "EndpointSlice");
    writes::create_if_absent(
        state,
        &Target::collection(slices, "kube-system"),
        slice.clone(),
    )
    .map_err(fail("kube-dns endpoints"))?;
    writes::update(
        state,
        &Target::object(slices, "kube-system", "kube-dns-node"),
        |current| {
            let changed = current.data["endpoints"] != slice["endpoints"];
            current.data["endpoints"] = slice["endpoints"].clone();
            changed
        },
    )
    .map_err(fail("kube-dns endpoints"))?;
    let namespace =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": METALLB_NAMESPACE}});
    writes::create_if_absent(
        state,
        &Target::collection(id_of("", "Namespace"), ""),
        namespace,
    )
    .map_err(fail("metallb-system namespace"))?;
    if let Some(pool) = &config.load_balancer_pool {
        let object = json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "lab-default", "namespace": METALLB_NAMESPACE},
            "spec": {"addresses": [pool]},
        });
        let pools = id_of("metallb.io", "IPAddressPool");
        writes::create_if_absent(state, &Target::collection(pools, METALLB_NAMESPACE), object)
            .map_err(fail("load balancer pool"))?;
    }
    Ok(())
}

/// The cluster's Services, read from the store for each DNS question.
struct StoreDirectory {
    state: Arc<ApiState>,
}

impl Directory for StoreDirectory {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        let service: Service = self
            .state
            .store
            .get(id_of("", "Service"), namespace, name)?
            .decode()
            .ok()?;
        let spec = service.spec.unwrap_or_default();
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|address| address.parse::<Ipv4Addr>().ok());
        let endpoints = if cluster_ip.is_none() {
            ready_endpoints(&self.state, namespace, name)
                .into_iter()
                .map(|(address, _)| address)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        Some(ServiceRecord {
            cluster_ip,
            endpoints,
            external_name: (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.clone())
                .flatten(),
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|port| {
                    Some((
                        port.name.unwrap_or_default(),
                        port.protocol.unwrap_or_else(|| "TCP".into()),
                        u16::try_from(port.port).ok()?,
                    ))
                })
                .collect(),
        })
    }
}

/// A Service's ready endpoints, from its EndpointSlices: address, and port by port name (for
/// kube-proxy's rules and for the API server calling a webhook Service).
pub(crate) fn ready_endpoints(
    state: &ApiState,
    namespace: &str,
    service: &str,
) -> Vec<(Ipv4Addr, BTreeMap<String, u16>)> {
    state
        .store
        .list(id_of("discovery.k8s.io", "EndpointSlice"), Some(namespace))
        .0
        .iter()
        .filter(|stored| {
            stored
                .object
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                .is_some_and(|name| name == service)
        })
        .filter_map(|stored| stored.decode::<EndpointSlice>().ok())
        .flat_map(|slice| {
            let ports: BTreeMap<String, u16> = slice
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|port| {
                    Some((
                        port.name.unwrap_or_default(),
                        u16::try_from(port.port?).ok()?,
                    ))
                })
                .collect();
            slice
                .endpoints
                .into_iter()
                .filter(|endpoint| {
                    endpoint
                        .conditions
                        .as_ref()
                        .and_then(|conditions| conditions.ready)
                        != Some(false)
                })
                .flat_map(|endpoint| endpoint.addresses)
                .filter_map(|address| address.parse::<Ipv4Addr>().ok())
                .map(move |address| (address, ports.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn run(
    state: Arc<ApiState>,
    config: ServicesConfig,
    mut changes: broadcast::Receiver<Arc<Event>>,
    mut stopping: watch::Receiver<bool>,
) {
    let watched = [
        id_of("", "Service"),
        id_of("discovery.k8s.io", "EndpointSlice"),
        id_of("metallb.io", "IPAddressPool"),
    ];
    let mut balancer = Balancer::default();
    let mut dirty = true;
    loop {
        if dirty {
            // Changes come in bursts (a Service, then its slices): take them all at once.
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            balancer.sync(&state, &config);
            sync_rules(&state, &config).await;
            sync_addresses(&state, &config).await;
        }
        tokio::select! {
            _ = stopping.changed() => return,
            received = changes.recv() => match received {
                Ok(event) => dirty = watched.contains(&event.resource),
                Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The address a LoadBalancer Service has in its status.
fn ingress_address(service: &StoredObject) -> Option<Ipv4Addr> {
    service.object.data["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .and_then(|address| address.parse().ok())
}

fn is_load_balancer(service: &StoredObject) -> bool {
    service.object.data["spec"]["type"] == "LoadBalancer"
}

/// metallb's controller and speaker for the cluster: assignments it made, to report changes once.
#[derive(Default)]
struct Balancer {
    reported: BTreeMap<String, Result<Ipv4Addr, String>>,
    invalid_pools: BTreeSet<String>,
}

const CONTROLLER: Reporter = Reporter {
    component: "metallb-controller",
    host: None,
};

impl Balancer {
    fn pools(&mut self, state: &ApiState, lab: Ipv4Net) -> (Vec<Pool>, Vec<String>) {
        let mut valid = Vec::new();
        let mut problems = Vec::new();
        for stored in state
            .store
            .list(id_of("metallb.io", "IPAddressPool"), None)
            .0
        {
            let spec = &stored.object.data["spec"];
            let entries: Vec<String> = spec["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.as_str().map(str::to_owned))
                .collect();
            let name = format!("{}/{}", stored.namespace(), stored.name());
            let parsed = load_balancers::parse_ranges(&entries).map(|ranges| Pool {
                name: name.clone(),
                ranges,
                auto_assign: spec["autoAssign"].as_bool() != Some(false),
                avoid_buggy_ips: spec["avoidBuggyIPs"].as_bool() == Some(true),
            });
            let problem = match &parsed {
                Ok(pool) => load_balancers::pool_problem(pool, lab),
                Err(reason) => Some(format!("IPAddressPool {name} is invalid: {reason}")),
            };
            match (parsed, problem) {
                (Ok(pool), None) => valid.push(pool),
                (_, Some(problem)) => {
                    if self.invalid_pools.insert(name.clone()) {
                        events::record(
                            state,
                            &CONTROLLER,
                            &events::reference(&stored.object),
                            EventType::Warning,
                            "InvalidConfiguration",
                            &problem,
                        );
                    }
                    problems.push(problem);
                }
                (Err(_), None) => {}
            }
        }
        (valid, problems)
    }

    fn sync(&mut self, state: &ApiState, config: &ServicesConfig) {
        let (pools, problems) = self.pools(state, config.lab_subnet);
        let services = state.store.list(id_of("", "Service"), None).0;
        let mut balanced: Vec<&StoredObject> = services
            .iter()
            .filter(|service| is_load_balancer(service))
            .collect();
        balanced.sort_by_key(|service| {
            (
                service
                    .object
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|time| time.0.as_second()),
                service.namespace().to_owned(),
                service.name().to_owned(),
            )
        });
        let requests: Vec<Request> = balanced
            .iter()
            .map(|service| {
                let annotations = service
                    .object
                    .metadata
                    .annotations
                    .clone()
                    .unwrap_or_default();
                let annotation =
                    |keys: [&str; 2]| keys.iter().find_map(|key| annotations.get(*key).cloned());
                let wanted = annotation([
                    "metallb.universe.tf/loadBalancerIPs",
                    "metallb.io/loadBalancerIPs",
                ])
                .and_then(|text| {
                    text.split(',')
                        .find_map(|address| address.trim().parse().ok())
                })
                .or_else(|| {
                    service.object.data["spec"]["loadBalancerIP"]
                        .as_str()
                        .and_then(|address| address.parse().ok())
                });
                Request {
                    service: format!("{}/{}", service.namespace(), service.name()),
                    current: ingress_address(service),
                    wanted,
                    pool: annotation([
                        "metallb.universe.tf/address-pool",
                        "metallb.io/address-pool",
                    ]),
                }
            })
            .collect();
        let results = load_balancers::assign(&requests, &pools);
        for service in &balanced {
            let key = format!("{}/{}", service.namespace(), service.name());
            let mut result = results
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Err("no available IPs".into()));
            if let Err(reason) = &mut result
                && !problems.is_empty()
            {
                reason.push_str(&format!(" ({})", problems.join("; ")));
            }
            let ingress = match &result {
                Ok(address) => json!([{"ip": address.to_string(), "ipMode": "VIP"}]),
                Err(_) => json!([]),
            };
            write_ingress(state, service, ingress);
            if self.reported.get(&key) != Some(&result) {
                let involved = events::reference(&service.object);
                match &result {
                    Ok(address) => {
                        events::record(
                            state,
                            &CONTROLLER,
                            &involved,
                            EventType::Normal,
                            "IPAllocated",
                            &format!("Assigned IP [\"{address}\"]"),
                        );
                        let speaker = Reporter {
                            component: "metallb-speaker",
                            host: Some(config.node_name.clone()),
                        };
                        events::record(
                            state,
                            &speaker,
                            &involved,
                            EventType::Normal,
                            "nodeAssigned",
                            &format!(
                                "announcing from node \"{}\" with protocol \"layer2\"",
                                config.node_name
                            ),
                        );
                    }
                    Err(reason) => events::record(
                        state,
                        &CONTROLLER,
                        &involved,
                        EventType::Warning,
                        "AllocationFailed",
                        &format!("Failed to allocate IP for \"{key}\": {reason}"),
                    ),
                }
                self.reported.insert(key, result);
            }
        }
        // A Service that is no longer a LoadBalancer gives its address back.
        for service in services
            .iter()
            .filter(|service| !is_load_balancer(service) && ingress_address(service).is_some())
        {
            write_ingress(state, service, json!([]));
        }
        self.reported.retain(|key, _| {
            balanced
                .iter()
                .any(|service| format!("{}/{}", service.namespace(), service.name()) == *key)
        });
    }
}

fn write_ingress(state: &ApiState, service: &StoredObject, ingress: Value) {
    let target = Target::status(id_of("", "Service"), service.namespace(), service.name());
    let result = writes::update(state, &target, |current| {
        let wanted = if ingress.as_array().is_some_and(Vec::is_empty) {
            json!({})
        } else {
            json!({"ingress": ingress})
        };
        if current.data["status"]["loadBalancer"] == wanted {
            return false;
        }
        current.data["status"]["loadBalancer"] = wanted;
        true
    });
    if let Err(error) = result
        && error.reason != "NotFound"
    {
        tracing::warn!(service = %service.name(), %error, "cannot write a LoadBalancer address");
    }
}

/// Every Service as kube-proxy sees it.
fn service_views(state: &ApiState) -> Vec<ServiceView> {
    let mut views = Vec::new();
    for stored in state.store.list(id_of("", "Service"), None).0 {
        let Ok(service) = stored.decode::<Service>() else {
            continue;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|address| address.parse().ok())
            .collect();
        let load_balancer_ips: Vec<Ipv4Addr> = ingress_address(&stored).into_iter().collect();
        let endpoints = ready_endpoints(state, stored.namespace(), stored.name());
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|port| {
                let name = port.name.clone().unwrap_or_default();
                Some(ServicePort {
                    port: u16::try_from(port.port).ok()?,
                    protocol: port
                        .protocol
                        .clone()
                        .unwrap_or_else(|| "TCP".into())
                        .to_lowercase(),
                    node_port: port.node_port.and_then(|number| u16::try_from(number).ok()),
                    endpoints: endpoints
                        .iter()
                        .filter_map(|(address, ports)| {
                            ports.get(&name).map(|number| (*address, *number))
                        })
                        .collect(),
                    name,
                })
            })
            .collect();
        if cluster_ips.is_empty() && load_balancer_ips.is_empty() {
            continue;
        }
        views.push(ServiceView {
            key: format!("{}/{}", stored.namespace(), stored.name()),
            cluster_ips,
            load_balancer_ips,
            ports,
        });
    }
    views
}

async fn sync_rules(state: &ApiState, config: &ServicesConfig) {
    let rules = proxy_rules::rules(config.node_address, &service_views(state));
    let node = config.node.clone();
    let result =
        tokio::task::spawn_blocking(move || crate::network::Node::restore_into(&node, &rules))
            .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "cannot load the node's service rules"),
        Err(error) => tracing::error!(%error, "the rules task failed"),
    }
}

/// Puts the cluster's LoadBalancer addresses on the node's lab interface (and takes off those it
/// no longer has), so that the node answers for them on the lab network, as metallb's speaker does.
async fn sync_addresses(state: &ApiState, config: &ServicesConfig) {
    let wanted: BTreeSet<Ipv4Addr> = state
        .store
        .list(id_of("", "Service"), None)
        .0
        .iter()
        .filter(|service| is_load_balancer(service))
        .filter_map(ingress_address)
        .collect();
    let node = config.node.clone();
    let node_address = config.node_address;
    let result = tokio::task::spawn_blocking(move || {
        let listing = node.ip(&["-4", "-o", "addr", "show", "dev", NODE_INTERFACE])?;
        let present: BTreeSet<Ipv4Addr> = listing
            .lines()
            .filter_map(|line| {
                line.split_whitespace()
                    .skip_while(|word| *word != "inet")
                    .nth(1)
            })
            .filter(|address| address.ends_with("/32"))
            .filter_map(|address| address.trim_end_matches("/32").parse().ok())
            .filter(|address| *address != node_address)
            .collect();
        let mut commands: Vec<String> = present
            .difference(&wanted)
            .map(|address| format!("addr del {address}/32 dev {NODE_INTERFACE}"))
            .collect();
        commands.extend(
            wanted
                .difference(&present)
                .map(|address| format!("addr add {address}/32 dev {NODE_INTERFACE}")),
        );
        node.ip_batch(&commands)
    })
    .await;
    if let Ok(Err(error)) = result {
        tracing::error!(%error, "cannot put the LoadBalancer addresses on the node");
    }
}
