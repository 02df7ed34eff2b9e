//! 15053: the pod's DNS, when capture sends port 53 here. Mesh service names (every alias the
//! pod may write: `helloworld`, `helloworld.sample`, `.svc`, the FQDN) are answered with the
//! service VIP, also for services that exist only in another cluster. A search-path expansion
//! of a known name (`helloworld.sample.sample.svc.cluster.local`) gets NXDOMAIN at once, so
//! the resolver moves on to the next search domain without a trip upstream. Everything else is
//! forwarded to the pod's own resolvers.

use crate::config::ProxyConfig;
use crate::passthrough::connect_marked;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use nix::sys::socket::{setsockopt, sockopt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// Istio's DNS proxy answers with a 30 s TTL.
const TTL: u32 = 30;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_TCP_MESSAGE: usize = 65535;

#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub search_domains: Vec<String>,
    pub upstream: Vec<SocketAddr>,
    pub mark: u32,
}

#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    Mesh(&'a [IpAddr]),
    /// A search-path expansion of a mesh name: it does not exist.
    Expansion,
    Elsewhere,
}

pub fn lookup<'a>(config: &'a ProxyConfig, search_domains: &[String], name: &str) -> Lookup<'a> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(addresses) = config.names.get(&name) {
        return Lookup::Mesh(addresses);
    }
    // A ServiceEntry wildcard (`*.example.com`) answers for every name under it, the most
    // specific wildcard first.
    let mut suffix = name.as_str();
    while let Some((_, parent)) = suffix.split_once('.') {
        if let Some(addresses) = config.names.get(&format!("*.{parent}")) {
            return Lookup::Mesh(addresses);
        }
        suffix = parent;
    }
    for domain in search_domains {
        if let Some(prefix) = name.strip_suffix(domain.as_str())
            && let Some(prefix) = prefix.strip_suffix('.')
            && config.names.contains_key(prefix)
        {
            return Lookup::Expansion;
        }
    }
    Lookup::Elsewhere
}

/// The reply for a query, or `None` when it must go upstream.
pub fn answer(
    config: &ProxyConfig,
    search_domains: &[String],
    request: &Message,
) -> Option<Message> {
    let [query] = request.queries.as_slice() else {
        return None;
    };
    let found = lookup(config, search_domains, &query.name().to_ascii());
    let addresses = match found {
        Lookup::Elsewhere => return None,
        Lookup::Mesh(addresses) => addresses,
        Lookup::Expansion => &[],
    };
    if matches!(found, Lookup::Mesh(_))
        && !matches!(query.query_type(), RecordType::A | RecordType::AAAA)
    {
        return None;
    }
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    if matches!(found, Lookup::Expansion) {
        response.metadata.response_code = ResponseCode::NXDomain;
        return Some(response);
    }
    for address in addresses {
        let data = match (query.query_type(), address) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A::from(*v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA::from(*v6)),
            // An IPv4 service asked for AAAA: no records, no error (Istio does the same).
            _ => continue,
        };
        response.add_answer(Record::from_rdata(query.name().clone(), TTL, data));
    }
    Some(response)
}

fn failure(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.response_code = code;
    response.queries = request.queries.clone();
    response.to_vec().ok()
}

/// Sends `query` to the pod's resolvers in turn; the first answer.
pub(crate) async fn forward_udp(query: &[u8], settings: &DnsSettings) -> Option<Vec<u8>> {
    for upstream in &settings.upstream {
        let bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if setsockopt(&socket, sockopt::Mark, &settings.mark).is_err() {
            tracing::warn!("cannot mark the DNS proxy's upstream socket; it needs CAP_NET_ADMIN");
        }
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buffer = vec![0u8; MAX_TCP_MESSAGE];
        if let Ok(Ok((length, _))) =
            tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buffer)).await
        {
            buffer.truncate(length);
            return Some(buffer);
        }
        tracing::debug!(%upstream, "upstream DNS server did not answer");
    }
    None
}

async fn forward_tcp(query: &[u8], settings: &DnsSettings) -> Option<Vec<u8>> {
    for upstream in &settings.upstream {
        let exchange = async {
            let mut stream = connect_marked(*upstream, settings.mark).await.ok()?;
            let length = u16::try_from(query.len()).ok()?;
            stream.write_all(&length.to_be_bytes()).await.ok()?;
            stream.write_all(query).await.ok()?;
            let length = stream.read_u16().await.ok()?;
            let mut reply = vec![0u8; usize::from(length)];
            stream.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(reply);
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

async fn resolve(
    query: &[u8],
    transport: Transport,
    config: &ProxyConfig,
    settings: &DnsSettings,
) -> Option<Vec<u8>> {
    let Ok(request) = Message::from_vec(query) else {
        tracing::debug!("a DNS query that does not parse; dropped");
        return None;
    };
    if let Some(response) = answer(config, &settings.search_domains, &request) {
        return response.to_vec().ok();
    }
    let forwarded = match transport {
        Transport::Udp => forward_udp(query, settings).await,
        Transport::Tcp => forward_tcp(query, settings).await,
    };
    forwarded.or_else(|| failure(&request, ResponseCode::ServFail))
}

pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    config: watch::Receiver<Arc<ProxyConfig>>,
    settings: DnsSettings,
) {
    let udp = Arc::new(udp);
    let settings = Arc::new(settings);
    let tcp_config = config.clone();
    let tcp_settings = settings.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let config = tcp_config.clone();
            let settings = tcp_settings.clone();
            tokio::spawn(async move { serve_tcp(stream, config, settings).await });
        }
    });
    let mut buffer = vec![0u8; MAX_TCP_MESSAGE];
    loop {
        let Ok((length, client)) = udp.recv_from(&mut buffer).await else {
            continue;
        };
        let query = buffer[..length].to_vec();
        let current = config.borrow().clone();
        let udp = udp.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            if let Some(reply) = resolve(&query, Transport::Udp, &current, &settings).await {
                let _ = udp.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(
    mut stream: TcpStream,
    config: watch::Receiver<Arc<ProxyConfig>>,
    settings: Arc<DnsSettings>,
) {
    // A client may send several queries on one connection; idle ones are closed.
    while let Ok(Ok(length)) =
        tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await
    {
        let mut query = vec![0u8; usize::from(length)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let current = config.borrow().clone();
        let Some(reply) = resolve(&query, Transport::Tcp, &current, &settings).await else {
            return;
        };
        let Ok(length) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&length.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn config() -> ProxyConfig {
        let mut config = ProxyConfig::default();
        let vip: IpAddr = "10.96.0.20".parse().unwrap();
        for name in [
            "helloworld",
            "helloworld.sample",
            "helloworld.sample.svc",
            "helloworld.sample.svc.cluster.local",
        ] {
            config.names.insert(name.into(), vec![vip]);
        }
        config
    }

    fn search() -> Vec<String> {
        [
            "sample.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn query(name: &str, kind: RecordType) -> Message {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message
    }

    #[test]
    fn every_alias_resolves_to_the_vip_and_expansions_are_nxdomain() {
        let config = config();
        for name in [
            "helloworld.",
            "HelloWorld.sample.",
            "helloworld.sample.svc.cluster.local.",
        ] {
            let response = answer(&config, &search(), &query(name, RecordType::A)).unwrap();
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert_eq!(response.metadata.id, 7);
            let addresses: Vec<String> = response
                .answers
                .iter()
                .map(|r| r.data.to_string())
                .collect();
            assert_eq!(addresses, ["10.96.0.20"], "{name}");
        }
        let expanded = answer(
            &config,
            &search(),
            &query("helloworld.sample.sample.svc.cluster.local.", RecordType::A),
        )
        .unwrap();
        assert_eq!(expanded.metadata.response_code, ResponseCode::NXDomain);
        let aaaa = answer(
            &config,
            &search(),
            &query("helloworld.sample.", RecordType::AAAA),
        )
        .unwrap();
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
    }

    #[test]
    fn a_wildcard_entry_answers_for_every_name_under_it_the_closest_first() {
        let mut config = config();
        let broad: IpAddr = "240.0.0.20".parse().unwrap();
        let narrow: IpAddr = "240.0.0.21".parse().unwrap();
        config.names.insert("*.apis.example".into(), vec![broad]);
        config
            .names
            .insert("*.eu.apis.example".into(), vec![narrow]);
        let table = [
            (
                "pay.apis.example",
                Lookup::Mesh(std::slice::from_ref(&broad)),
            ),
            (
                "a.b.apis.example",
                Lookup::Mesh(std::slice::from_ref(&broad)),
            ),
            (
                "pay.eu.apis.example",
                Lookup::Mesh(std::slice::from_ref(&narrow)),
            ),
            ("apis.example", Lookup::Elsewhere),
            ("apis.example.org", Lookup::Elsewhere),
        ];
        for (name, expected) in table {
            assert_eq!(lookup(&config, &search(), name), expected, "{name}");
        }
    }

    #[test]
    fn other_names_and_types_go_upstream() {
        let config = config();
        assert!(answer(&config, &search(), &query("example.com.", RecordType::A)).is_none());
        assert!(
            answer(
                &config,
                &search(),
                &query("helloworld.sample.", RecordType::MX)
            )
            .is_none()
        );
        assert!(
            answer(
                &config,
                &search(),
                &query("other.sample.svc.cluster.local.", RecordType::A)
            )
            .is_none()
        );
    }
}
