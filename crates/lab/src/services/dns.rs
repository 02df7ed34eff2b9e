//! The cluster DNS (kube-dns's job, CoreDNS's answers): `<service>.<namespace>.svc.cluster.local`
//! is the Service's ClusterIP (a headless Service's ready endpoints; an ExternalName Service's
//! CNAME), `_<port>._<protocol>.<service>...` its SRV records, `<a-b-c-d>.<namespace>.pod...` that
//! address. Anything else in `cluster.local` does not exist, and neither does anything outside
//! it: the lab has no outside world. Pods find it at the `kube-dns` Service's address, which
//! leads to the node where it listens.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CoreDNS's `kubernetes` plugin answers with a 5 s TTL.
const TTL: u32 = 5;
const ZONE: &str = "cluster.local";

/// A Service as DNS answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// `None` for a headless Service.
    pub cluster_ip: Option<Ipv4Addr>,
    /// A headless Service's ready endpoints.
    pub endpoints: Vec<Ipv4Addr>,
    pub external_name: Option<String>,
    /// `(name, protocol, port)`.
    pub ports: Vec<(String, String, u16)>,
}

/// The cluster's Services, as DNS reads them.
pub trait Directory: Send + Sync {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord>;
}

/// What a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<Ipv4Addr>),
    Alias(String),
    Services(Vec<(u16, String)>),
    /// The name exists, with nothing of the type asked.
    NoData,
    NoSuchName,
}

/// What `name` is for a `kind` query.
pub fn resolve(name: &str, kind: RecordType, directory: &dyn Directory) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(inside) = name
        .strip_suffix(ZONE)
        .map(|rest| rest.trim_end_matches('.'))
    else {
        return Answer::NoSuchName;
    };
    let labels: Vec<&str> = if inside.is_empty() {
        Vec::new()
    } else {
        inside.split('.').collect()
    };
    let want_address = kind == RecordType::A;
    match labels.as_slice() {
        [] | ["svc"] | [_, "svc"] | ["pod"] | [_, "pod"] => Answer::NoData,
        [service, namespace, "svc"] => match directory.service(namespace, service) {
            None => Answer::NoSuchName,
            Some(record) => {
                if let Some(target) = record.external_name {
                    return Answer::Alias(target);
                }
                let addresses = record
                    .cluster_ip
                    .map_or(record.endpoints, |address| vec![address]);
                match kind {
                    RecordType::A if !addresses.is_empty() => Answer::Addresses(addresses),
                    RecordType::SRV => Answer::Services(
                        record
                            .ports
                            .iter()
                            .map(|(_, _, port)| {
                                (*port, format!("{service}.{namespace}.svc.{ZONE}."))
                            })
                            .collect(),
                    ),
                    _ => Answer::NoData,
                }
            }
        },
        [port, protocol, service, namespace, "svc"]
            if port.starts_with('_') && protocol.starts_with('_') =>
        {
            match directory.service(namespace, service) {
                None => Answer::NoSuchName,
                Some(record) => {
                    let found: Vec<(u16, String)> = record
                        .ports
                        .iter()
                        .filter(|(name, proto, _)| {
                            *name == port[1..] && proto.eq_ignore_ascii_case(&protocol[1..])
                        })
                        .map(|(_, _, number)| {
                            (*number, format!("{service}.{namespace}.svc.{ZONE}."))
                        })
                        .collect();
                    match (kind, found.is_empty()) {
                        (_, true) => Answer::NoSuchName,
                        (RecordType::SRV, false) => Answer::Services(found),
                        _ => Answer::NoData,
                    }
                }
            }
        }
        [address, _namespace, "pod"] => match address.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(parsed) if want_address => Answer::Addresses(vec![parsed]),
            Ok(_) => Answer::NoData,
            Err(_) => Answer::NoSuchName,
        },
        _ => Answer::NoSuchName,
    }
}

fn soa() -> Option<Record> {
    let zone = Name::from_ascii(format!("{ZONE}.")).ok()?;
    let primary = Name::from_ascii(format!("ns.dns.{ZONE}.")).ok()?;
    let contact = Name::from_ascii(format!("hostmaster.{ZONE}.")).ok()?;
    Some(Record::from_rdata(
        zone,
        TTL,
        RData::SOA(SOA::new(primary, contact, 1, 7200, 1800, 86400, TTL)),
    ))
}

/// The response to one request.
pub fn respond(request: &Message, directory: &dyn Directory) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }
    let name = query.name().clone();
    let answer = resolve(&name.to_ascii(), query.query_type(), directory);
    response.metadata.authoritative = !matches!(answer, Answer::NoSuchName)
        || name.to_ascii().trim_end_matches('.').ends_with(ZONE);
    match answer {
        Answer::Addresses(addresses) => {
            for address in addresses {
                response.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::A(A::from(address)),
                ));
            }
        }
        Answer::Alias(target) => {
            match Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                Ok(target) => {
                    response.add_answer(Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::CNAME(CNAME(target)),
                    ));
                }
                Err(_) => response.metadata.response_code = ResponseCode::ServFail,
            }
        }
        Answer::Services(services) => {
            for (port, target) in services {
                if let Ok(target) = Name::from_ascii(&target) {
                    response.add_answer(Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, port, target)),
                    ));
                }
            }
        }
        Answer::NoData => {
            response.add_authorities(soa());
        }
        Answer::NoSuchName => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authorities(soa());
        }
    }
    response
}

fn handle(bytes: &[u8], directory: &dyn Directory) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    respond(&request, directory).to_vec().ok()
}

/// Serves DNS on `address` (UDP and TCP) until the task is dropped. Call from a task on the
/// node's runtime, so that the sockets are the node's.
pub async fn serve(address: SocketAddr, directory: Arc<dyn Directory>) -> std::io::Result<()> {
    let udp = tokio::net::UdpSocket::bind(address).await?;
    let tcp = tokio::net::TcpListener::bind(address).await?;
    let stream_directory = directory.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let directory = stream_directory.clone();
            tokio::spawn(async move {
                loop {
                    let mut length = [0u8; 2];
                    let read = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        stream.read_exact(&mut length),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) {
                        return;
                    }
                    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
                    if stream.read_exact(&mut message).await.is_err() {
                        return;
                    }
                    let Some(reply) = handle(&message, directory.as_ref()) else {
                        return;
                    };
                    let Ok(size) = u16::try_from(reply.len()) else {
                        return;
                    };
                    if stream.write_all(&size.to_be_bytes()).await.is_err()
                        || stream.write_all(&reply).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let mut buffer = vec![0u8; 4096];
    loop {
        let (size, peer) = udp.recv_from(&mut buffer).await?;
        if let Some(reply) = handle(&buffer[..size], directory.as_ref()) {
            let _ = udp.send_to(&reply, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cluster;

    impl Directory for Cluster {
        fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
            match (namespace, name) {
                ("sample", "helloworld") => Some(ServiceRecord {
                    cluster_ip: Some(Ipv4Addr::new(10, 11, 0, 7)),
                    endpoints: Vec::new(),
                    external_name: None,
                    ports: vec![("http".into(), "TCP".into(), 5000)],
                }),
                ("sample", "headless") => Some(ServiceRecord {
                    cluster_ip: None,
                    endpoints: vec![Ipv4Addr::new(10, 10, 0, 5), Ipv4Addr::new(10, 10, 0, 6)],
                    external_name: None,
                    ports: Vec::new(),
                }),
                ("sample", "outside") => Some(ServiceRecord {
                    cluster_ip: None,
                    endpoints: Vec::new(),
                    external_name: Some("httpbin.org".into()),
                    ports: Vec::new(),
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn names_resolve_as_kube_dns_resolves_them() {
        let a = RecordType::A;
        let cases: Vec<(&str, RecordType, Answer)> = vec![
            (
                "helloworld.sample.svc.cluster.local.",
                a,
                Answer::Addresses(vec![Ipv4Addr::new(10, 11, 0, 7)]),
            ),
            (
                "HelloWorld.Sample.svc.cluster.local",
                a,
                Answer::Addresses(vec![Ipv4Addr::new(10, 11, 0, 7)]),
            ),
            (
                "helloworld.sample.svc.cluster.local",
                RecordType::AAAA,
                Answer::NoData,
            ),
            (
                "headless.sample.svc.cluster.local",
                a,
                Answer::Addresses(vec![
                    Ipv4Addr::new(10, 10, 0, 5),
                    Ipv4Addr::new(10, 10, 0, 6),
                ]),
            ),
            (
                "outside.sample.svc.cluster.local",
                a,
                Answer::Alias("httpbin.org".into()),
            ),
            (
                "_http._tcp.helloworld.sample.svc.cluster.local",
                RecordType::SRV,
                Answer::Services(vec![(5000, "helloworld.sample.svc.cluster.local.".into())]),
            ),
            (
                "_grpc._tcp.helloworld.sample.svc.cluster.local",
                RecordType::SRV,
                Answer::NoSuchName,
            ),
            (
                "10-10-0-5.sample.pod.cluster.local",
                a,
                Answer::Addresses(vec![Ipv4Addr::new(10, 10, 0, 5)]),
            ),
            ("missing.sample.svc.cluster.local", a, Answer::NoSuchName),
            // A search-path expansion of a short name.
            (
                "helloworld.sample.sample.svc.cluster.local",
                a,
                Answer::NoSuchName,
            ),
            ("sample.svc.cluster.local", a, Answer::NoData),
            ("example.com.", a, Answer::NoSuchName),
            (
                "helloworld.sample.svc.cluster.local.example.com",
                a,
                Answer::NoSuchName,
            ),
        ];
        for (name, kind, expected) in cases {
            assert_eq!(resolve(name, kind, &Cluster), expected, "{name} {kind:?}");
        }
    }

    #[test]
    fn responses_carry_the_records_and_codes() {
        let mut request = Message::query();
        request.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("helloworld.sample.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let bytes = handle(&request.to_vec().unwrap(), &Cluster).unwrap();
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.answers.len(), 1);
        assert!(response.metadata.authoritative);
        let mut missing = Message::query();
        missing.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("nope.example.").unwrap(),
            RecordType::A,
        ));
        let response =
            Message::from_vec(&handle(&missing.to_vec().unwrap(), &Cluster).unwrap()).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert!(response.answers.is_empty());
        assert!(handle(b"garbage", &Cluster).is_none());
    }
}
