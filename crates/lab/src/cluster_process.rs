//! The process behind a running lab cluster (`causeway lab serve-cluster`): it makes the cluster's
//! node on the lab network, serves the API (on `127.0.0.1` for the host, on the node's address for
//! the lab), and runs what a kind node runs, until SIGTERM. Whatever a previous run that was
//! killed outright left behind is removed first.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use std::sync::Arc;

use crate::apiserver::controllers::scheduler::node_name;
use crate::apiserver::{self, ApiServerConfig, config::NODE_API_PORT};
use crate::clusters::{ClusterRecord, DATA_DIR, Endpoint, Lab, LabError};
use crate::kubelet::{Kubelet, KubeletConfig, Prefixes};
use crate::network::node::NodeSpec;
use crate::network::node_runtime::NodeRuntime;
use crate::network::{Node, routes};
use crate::services::{ServiceRouting, ServicesConfig};

/// Runs cluster `name` in this process until SIGTERM or SIGINT; `ready` runs once it serves.
pub async fn serve(lab: &Lab, name: &str, ready: impl FnOnce()) -> Result<(), LabError> {
    let directory = lab.cluster_dir(name);
    let _running = lock_process(&directory)?;
    let record = with_node_address(lab, lab.record(name)?)?;
    let node_address = record
        .node_address
        .expect("with_node_address gives every record one");
    lab.remove_leftovers(name)?;
    let bridge = lab.bridge()?;
    let network = lab.network()?;
    let spec = NodeSpec {
        cluster: name.to_owned(),
        address: node_address,
        lab_subnet: network.subnet,
        pod_subnet: record.pod_subnet,
        service_subnet: record.service_subnet,
    };
    let node = Node::create(spec, &bridge)?;
    let result = serve_on(lab, record, &node, ready).await;
    if let Err(error) = node.delete() {
        tracing::warn!(cluster = name, %error, "cannot delete the node's namespace; `causeway lab stop-cluster` removes it");
    }
    result
}

async fn serve_on(
    lab: &Lab,
    mut record: ClusterRecord,
    node: &Node,
    ready: impl FnOnce(),
) -> Result<(), LabError> {
    let name = record.name.clone();
    let node_address = node.spec.address;
    let network = lab.network()?;
    for peer in network.peers_of(&name) {
        let Some(peer) = lab.record(peer).ok().and_then(|peer| peer.addresses()) else {
            continue;
        };
        for (prefix, via) in routes::routes_to(&peer) {
            node.add_route(prefix, via)?;
        }
    }

    let directory = lab.cluster_dir(&name);
    let mut config = ApiServerConfig::new(&name, directory.join(DATA_DIR), record.service_subnet);
    config.node_address = Some(node_address);
    if let Some(port) = record.api_port {
        config.listen.set_port(port);
    }
    let mut server = match apiserver::start(config.clone()).await {
        Ok(server) => server,
        Err(apiserver::StartError::Listen { address, source }) if record.api_port.is_some() => {
            tracing::warn!(%address, %source, "the previous port is taken; listening on a new one (kubeconfigs need `causeway lab start-cluster` to refresh)");
            config.listen.set_port(0);
            apiserver::start(config).await?
        }
        Err(error) => return Err(error.into()),
    };
    let node_listener = bind_in_node(node, SocketAddr::from((node_address, NODE_API_PORT)))?;
    server
        .serve_also(node_listener)
        .map_err(|source| LabError::Io {
            action: "serve the API on the node address of",
            path: directory.clone(),
            source,
        })?;

    let dialing_node = node.netns.clone();
    let _ = server
        .shared()
        .dialer
        .set(std::sync::Arc::new(move |address, timeout| {
            dialing_node
                .spawn_inside(move || std::net::TcpStream::connect_timeout(&address, timeout))
                .join()
                .map_err(|_| std::io::Error::other("the thread dialing from the node panicked"))?
                .map_err(std::io::Error::other)?
        }));
    let node_runtime =
        NodeRuntime::start(&node.netns).map_err(|error| LabError::Network(error.into()))?;
    let services = ServiceRouting::start(
        server.shared().clone(),
        ServicesConfig {
            node: node.netns.clone(),
            node_name: node_name(&name),
            node_address,
            lab_subnet: network.subnet,
            dns_address: cluster_dns_address(record.service_subnet),
            load_balancer_pool: record.load_balancer_pool.clone(),
        },
        &node_runtime.handle(),
    )
    .map_err(|error| LabError::Refused(error.to_string()))?;
    let kubelet = Kubelet::start(
        server.shared().clone(),
        KubeletConfig {
            cluster: name.clone(),
            node_name: node_name(&name),
            node: node.netns.clone(),
            node_address,
            pod_subnet: record.pod_subnet,
            dns: cluster_dns_address(record.service_subnet),
            pods_dir: directory.join("pods"),
            causeway: std::env::current_exe().map_err(|source| LabError::Io {
                action: "find the causeway executable for",
                path: directory.clone(),
                source,
            })?,
            node_runtime: node_runtime.handle(),
            node_cpus: std::thread::available_parallelism()
                .map_or(1, |cpus| u32::try_from(cpus.get()).unwrap_or(1)),
            node_memory_bytes: memory_bytes(),
        },
        lab_prefixes(lab),
    );

    record.api_port = Some(server.address.port());
    Lab::write_json(&lab.record_path(&name), &record)?;
    let endpoint = Endpoint {
        pid: std::process::id(),
        address: server.address,
    };
    Lab::write_json(&lab.endpoint_path(&name), &endpoint)?;
    tracing::info!(cluster = %name, node = %node.name(), address = %node_address, "node ready");
    ready();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| LabError::Io {
        action: "listen for signals in",
        path: directory.clone(),
        source,
    })?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(cluster = %name, "stopping");
    let _ = std::fs::remove_file(lab.endpoint_path(&name));
    kubelet.stop().await;
    services.stop().await;
    drop(node_runtime);
    server.shutdown().await;
    Ok(())
}

/// The cluster DNS's address: the service subnet's tenth, as kube-dns's is (`10.96.0.10`).
pub fn cluster_dns_address(service_subnet: ipnet::Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_subnet.network()) + 10)
}

/// The prefixes pods route through their node, read from the lab's clusters each time.
fn lab_prefixes(lab: &Lab) -> Prefixes {
    let lab = Lab::new(lab.root());
    Arc::new(move || {
        let subnet = lab
            .network()
            .map(|network| network.subnet)
            .unwrap_or_else(|_| {
                crate::network::DEFAULT_LAB_SUBNET
                    .parse()
                    .expect("a valid subnet")
            });
        let clusters = lab.addresses().unwrap_or_default();
        routes::pod_prefixes(subnet, &clusters)
    })
}

/// The machine's memory, as a node reports its capacity.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kilobytes| kilobytes * 1024)
}

/// One process per cluster: held while it runs (the API server's own lock comes too late, after
/// the leftovers of a previous run were removed).
fn lock_process(directory: &Path) -> Result<std::fs::File, LabError> {
    let path = directory.join("process.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LabError::Io {
            action: "open",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LabError::Refused(format!(
            "the cluster in {} is already running; stop it first (`causeway lab stop-cluster`)",
            directory.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(LabError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

/// A record made before clusters had nodes gets its node address now.
fn with_node_address(lab: &Lab, record: ClusterRecord) -> Result<ClusterRecord, LabError> {
    if record.node_address.is_some() {
        return Ok(record);
    }
    let _lock = lab.lock()?;
    let taken: Vec<Ipv4Addr> = lab
        .clusters()?
        .iter()
        .filter_map(|other| other.node_address)
        .collect();
    let mut record = record;
    record.node_address = Some(lab.network()?.free_node_address(&taken)?);
    Lab::write_json(&lab.record_path(&record.name), &record)?;
    Ok(record)
}

/// A listening socket bound inside the node's namespace (where `address` is), usable from any
/// thread: a socket stays in the namespace it was made in.
fn bind_in_node(node: &Node, address: SocketAddr) -> Result<std::net::TcpListener, LabError> {
    let bound = node
        .netns
        .spawn_inside(move || std::net::TcpListener::bind(address))
        .join()
        .map_err(|_| LabError::Refused("the thread binding the node listener panicked".into()))?
        .map_err(|error| LabError::Network(error.into()))?;
    bound.map_err(|source| LabError::Io {
        action: "listen inside the node on",
        path: address.to_string().into(),
        source,
    })
}
