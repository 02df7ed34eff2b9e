//! STRICT_DNS clusters (a ServiceEntry with `resolution: DNS`): the proxy resolves the names its
//! endpoints are given by, and again when the answers expire, as Envoy does. A stage between
//! ADS and the data plane: configurations pass through with each DNS cluster's endpoints filled
//! from the latest answers, and a new configuration goes out when an answer changes.
//!
//! Names are asked of the pod's own resolvers (`resolv.conf`), from a socket with the proxy's
//! mark so that DNS capture lets it through. A failed lookup keeps the last addresses (Envoy
//! keeps its hosts too) and is tried again within [`RETRY_AFTER_FAILURE`].

use crate::config::{ClusterKind, ProxyConfig, UpstreamEndpoint};
use crate::dns::{DnsSettings, forward_udp};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Envoy's `dns_min_refresh_rate`: TTLs shorter than this are not followed.
const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How often one name is asked again: the most eager of the clusters that use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Refresh {
    every: Duration,
    respect_ttl: bool,
}

/// The names the configuration's DNS clusters need.
fn wanted_names(config: &ProxyConfig) -> BTreeMap<String, Refresh> {
    let mut names: BTreeMap<String, Refresh> = BTreeMap::new();
    for dns in config.clusters.values().filter_map(|c| c.dns.as_ref()) {
        for target in &dns.targets {
            let refresh = Refresh {
                every: dns.refresh,
                respect_ttl: dns.respect_ttl,
            };
            names
                .entry(target.host.clone())
                .and_modify(|known| {
                    known.every = known.every.min(refresh.every);
                    known.respect_ttl |= refresh.respect_ttl;
                })
                .or_insert(refresh);
        }
    }
    names
}

/// `config` with every DNS cluster's endpoints made from `addresses_of` each name: one
/// endpoint per address of each name, in the order the names and addresses came. Names without
/// an answer yet give no endpoint.
pub fn with_resolved<'a>(
    config: &ProxyConfig,
    addresses_of: impl Fn(&str) -> Option<&'a [IpAddr]>,
) -> ProxyConfig {
    let mut resolved = config.clone();
    for cluster in resolved.clusters.values_mut() {
        let (ClusterKind::Dns, Some(dns)) = (cluster.kind, &cluster.dns) else {
            continue;
        };
        let endpoints: Vec<UpstreamEndpoint> = dns
            .targets
            .iter()
            .flat_map(|target| {
                addresses_of(&target.host)
                    .into_iter()
                    .flatten()
                    .map(|ip| UpstreamEndpoint {
                        address: SocketAddr::new(*ip, target.port),
                        ..target.endpoint.clone()
                    })
            })
            .collect();
        cluster.endpoints = endpoints.into();
    }
    resolved
}

/// The addresses of `host` and how long they may be kept (`None`: an IP address, for ever).
async fn resolve(
    host: &str,
    settings: &DnsSettings,
) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![ip], None));
    }
    let name = Name::from_ascii(format!("{host}."))
        .map_err(|error| format!("{host:?} is not a DNS name: {error}"))?;
    // Istio's clusters ask for IPv4 only (`dns_lookup_family: V4_ONLY`), and so does the lab.
    let mut query = Message::new(query_id(host), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::A));
    let bytes = query
        .to_vec()
        .map_err(|error| format!("cannot encode the query for {host}: {error}"))?;
    let reply = forward_udp(&bytes, settings)
        .await
        .ok_or_else(|| format!("no resolver answered for {host} ({:?})", settings.upstream))?;
    let reply = Message::from_vec(&reply)
        .map_err(|error| format!("the answer for {host} does not parse: {error}"))?;
    if reply.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{host}: {}", reply.metadata.response_code));
    }
    let mut addresses = Vec::new();
    let mut ttl = u32::MAX;
    for record in &reply.answers {
        if let RData::A(a) = &record.data {
            addresses.push(IpAddr::V4(a.0));
            ttl = ttl.min(record.ttl);
        }
    }
    if addresses.is_empty() {
        return Err(format!("{host} has no IPv4 address"));
    }
    Ok((addresses, Some(Duration::from_secs(u64::from(ttl)))))
}

/// A query ID that differs between names and over time; the answer is matched by socket anyway.
fn query_id(host: &str) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let folded = host
        .bytes()
        .fold(nanos, |hash, byte| hash.rotate_left(5) ^ u32::from(byte));
    (folded & 0xffff) as u16
}

/// When to ask again after an answer that may be kept for `ttl`.
fn next_refresh(refresh: Refresh, ttl: Option<Duration>) -> Option<Duration> {
    match ttl {
        None => None,
        Some(ttl) if refresh.respect_ttl => Some(ttl.max(MIN_REFRESH)),
        Some(_) => Some(refresh.every),
    }
}

struct Answer {
    addresses: Vec<IpAddr>,
    /// `None`: an IP address, never asked again.
    refresh_at: Option<Instant>,
}

/// Passes `input` on with the DNS clusters resolved; the task ends when `input`'s sender does.
pub fn start(
    mut input: watch::Receiver<Arc<ProxyConfig>>,
    settings: DnsSettings,
) -> (
    watch::Receiver<Arc<ProxyConfig>>,
    tokio::task::JoinHandle<()>,
) {
    let (publish, output) = watch::channel(input.borrow().clone());
    let task = tokio::spawn(async move {
        let mut answers: HashMap<String, Answer> = HashMap::new();
        loop {
            let current = input.borrow_and_update().clone();
            let wanted = wanted_names(&current);
            answers.retain(|name, _| wanted.contains_key(name));
            let now = Instant::now();
            let due: Vec<(String, Refresh)> = wanted
                .iter()
                .filter(|(name, _)| {
                    answers
                        .get(*name)
                        .is_none_or(|answer| answer.refresh_at.is_some_and(|at| at <= now))
                })
                .map(|(name, refresh)| (name.clone(), *refresh))
                .collect();
            let lookups = due.into_iter().map(|(name, refresh)| {
                let settings = &settings;
                async move {
                    let result = resolve(&name, settings).await;
                    (name, refresh, result)
                }
            });
            for (name, refresh, result) in futures::future::join_all(lookups).await {
                let now = Instant::now();
                match result {
                    Ok((addresses, ttl)) => {
                        let refresh_at = next_refresh(refresh, ttl).map(|after| now + after);
                        answers.insert(
                            name,
                            Answer {
                                addresses,
                                refresh_at,
                            },
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?RETRY_AFTER_FAILURE, "cannot resolve a DNS cluster's endpoint; keeping its last addresses");
                        let answer = answers.entry(name).or_insert(Answer {
                            addresses: Vec::new(),
                            refresh_at: None,
                        });
                        answer.refresh_at = Some(now + RETRY_AFTER_FAILURE.min(refresh.every));
                    }
                }
            }
            let resolved = if wanted.is_empty() {
                current
            } else {
                Arc::new(with_resolved(&current, |name| {
                    answers.get(name).map(|answer| answer.addresses.as_slice())
                }))
            };
            publish.send_if_modified(|published| {
                let changed = **published != *resolved;
                if changed {
                    *published = resolved;
                }
                changed
            });
            let wake = answers
                .values()
                .filter_map(|answer| answer.refresh_at)
                .min();
            tokio::select! {
                changed = input.changed() => if changed.is_err() { return },
                () = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    });
    (output, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DnsResolution, LoadBalancing, NamedEndpoint, PortProtocol, UpstreamCluster,
    };
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;
    use std::net::Ipv4Addr;
    use tokio::net::UdpSocket;

    fn template(weight: u32) -> UpstreamEndpoint {
        UpstreamEndpoint {
            address: SocketAddr::from(([0, 0, 0, 0], 80)),
            weight,
            mtls: true,
            via_gateway: false,
            cluster: String::new(),
            network: String::new(),
            identity: None,
            workload: None,
        }
    }

    fn dns_config(hosts: &[(&str, u16, u32)]) -> ProxyConfig {
        let cluster = UpstreamCluster {
            name: "outbound|8000||api.example".into(),
            kind: ClusterKind::Dns,
            load_balancing: LoadBalancing::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            tls: None,
            service: Some("api.example".into()),
            protocol: PortProtocol::Http,
            endpoints: Arc::from(Vec::new()),
            dns: Some(Arc::new(DnsResolution {
                targets: hosts
                    .iter()
                    .map(|(host, port, weight)| NamedEndpoint {
                        host: (*host).into(),
                        port: *port,
                        endpoint: template(*weight),
                    })
                    .collect(),
                refresh: Duration::from_secs(60),
                respect_ttl: true,
            })),
        };
        let mut config = ProxyConfig::default();
        config.clusters.insert(cluster.name.clone(), cluster);
        config
    }

    fn endpoints(config: &ProxyConfig) -> Vec<(String, u32)> {
        config.clusters["outbound|8000||api.example"]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.weight))
            .collect()
    }

    #[test]
    fn every_address_of_every_name_becomes_an_endpoint_like_its_template() {
        let config = dns_config(&[
            ("api.example", 80, 3),
            ("10.0.0.9", 8080, 1),
            ("gone.example", 80, 1),
        ]);
        let answers: HashMap<String, Vec<IpAddr>> = [
            (
                "api.example".to_owned(),
                vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            ),
            ("10.0.0.9".to_owned(), vec!["10.0.0.9".parse().unwrap()]),
        ]
        .into();
        let resolved = with_resolved(&config, |name| answers.get(name).map(Vec::as_slice));
        assert_eq!(
            endpoints(&resolved),
            [
                ("10.0.0.1:80".to_owned(), 3),
                ("10.0.0.2:80".to_owned(), 3),
                ("10.0.0.9:8080".to_owned(), 1)
            ],
            "a name without an answer gives nothing"
        );
        assert!(resolved.clusters["outbound|8000||api.example"].endpoints[0].mtls);
    }

    #[test]
    fn answers_are_kept_for_their_ttl_but_not_less_than_the_minimum() {
        let ttl = Refresh {
            every: Duration::from_secs(60),
            respect_ttl: true,
        };
        let fixed = Refresh {
            respect_ttl: false,
            ..ttl
        };
        let table = [
            (
                ttl,
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(30)),
            ),
            (ttl, Some(Duration::from_secs(1)), Some(MIN_REFRESH)),
            (
                fixed,
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(60)),
            ),
            (ttl, None, None),
        ];
        for (refresh, answered, expected) in table {
            assert_eq!(
                next_refresh(refresh, answered),
                expected,
                "{refresh:?} {answered:?}"
            );
        }
        let config = dns_config(&[("a.example", 80, 1), ("a.example", 81, 1)]);
        assert_eq!(wanted_names(&config).len(), 1, "one lookup per name");
    }

    /// A resolver that knows `known`'s names and answers NXDOMAIN for the rest.
    async fn resolver(known: Vec<(&'static str, Ipv4Addr)>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 1500];
            while let Ok((length, client)) = socket.recv_from(&mut buffer).await {
                let Ok(request) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                let query = request.queries[0].clone();
                let mut reply =
                    Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
                reply.add_query(query.clone());
                let asked = query.name().to_ascii();
                match known.iter().find(|(name, _)| asked == format!("{name}.")) {
                    Some((_, ip)) => {
                        reply.add_answer(Record::from_rdata(
                            query.name().clone(),
                            30,
                            RData::A(A::from(*ip)),
                        ));
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), client).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn the_stage_resolves_names_through_the_pods_resolvers() {
        let upstream = resolver(vec![("api.example", Ipv4Addr::new(10, 1, 2, 3))]).await;
        let (feed, input) = watch::channel(Arc::new(ProxyConfig::default()));
        let (mut output, task) = start(
            input,
            DnsSettings {
                search_domains: Vec::new(),
                upstream: vec![upstream],
                mark: 0,
            },
        );
        feed.send_replace(Arc::new(dns_config(&[
            ("api.example", 80, 1),
            ("missing.example", 80, 1),
        ])));
        let resolved = tokio::time::timeout(
            Duration::from_secs(10),
            output.wait_for(|config| {
                config
                    .clusters
                    .get("outbound|8000||api.example")
                    .is_some_and(|cluster| !cluster.endpoints.is_empty())
            }),
        )
        .await
        .expect("resolved within 10 s")
        .unwrap()
        .clone();
        assert_eq!(endpoints(&resolved), [("10.1.2.3:80".to_owned(), 1)]);
        // Configurations without DNS clusters pass through as they are.
        let plain = Arc::new(ProxyConfig::default());
        feed.send_replace(plain.clone());
        tokio::time::timeout(
            Duration::from_secs(10),
            output.wait_for(|config| Arc::ptr_eq(config, &plain)),
        )
        .await
        .expect("passed on within 10 s")
        .unwrap();
        task.abort();
    }
}
