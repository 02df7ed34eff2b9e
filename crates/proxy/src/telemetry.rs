//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_tcp_*`) with Istio's label names, and the proxy's own counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Who talked to whom, as Istio labels it. `unknown` where a side is not known.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// `source` (the client's sidecar) or `destination` (the server's).
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    /// `http`, `grpc` or `tcp`.
    pub request_protocol: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
    pub response_flags: String,
}

pub const UNKNOWN: &str = "unknown";

impl TrafficLabels {
    pub fn unknown(reporter: &'static str) -> TrafficLabels {
        let unknown = || UNKNOWN.to_owned();
        TrafficLabels {
            reporter,
            source_workload: unknown(),
            source_workload_namespace: unknown(),
            source_principal: unknown(),
            source_app: unknown(),
            source_version: unknown(),
            source_cluster: unknown(),
            destination_workload: unknown(),
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_app: unknown(),
            destination_version: unknown(),
            destination_service: unknown(),
            destination_service_name: unknown(),
            destination_service_namespace: unknown(),
            destination_cluster: unknown(),
            request_protocol: "tcp",
            connection_security_policy: "none",
            response_flags: "-".into(),
        }
    }

    /// Fills the destination service from its FQDN (`name.namespace.svc.<suffix>`).
    pub fn set_destination_service(&mut self, fqdn: &str) {
        self.destination_service = fqdn.to_owned();
        let mut parts = fqdn.split('.');
        if let (Some(name), Some(namespace)) = (parts.next(), parts.next()) {
            self.destination_service_name = name.to_owned();
            self.destination_service_namespace = namespace.to_owned();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
    pub grpc_response_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

pub struct Telemetry {
    pub registry: Registry,
    pub tcp_opened: Family<TrafficLabels, Counter>,
    pub tcp_closed: Family<TrafficLabels, Counter>,
    /// Bytes towards the client (responses).
    pub tcp_sent: Family<TrafficLabels, Counter>,
    /// Bytes from the client (requests).
    pub tcp_received: Family<TrafficLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram>,
    /// Connections closed without being served, by listener and reason (unknown SNI, a STRICT
    /// port reached in plaintext, a failed handshake, ...).
    pub refused: Family<ReasonLabels, Counter>,
    pub active_connections: Gauge,
}

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 18] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0,
];

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let telemetry = Telemetry {
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            refused: Family::default(),
            active_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            telemetry.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            telemetry.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent towards the client during a TCP connection",
            telemetry.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client during a TCP connection",
            telemetry.tcp_received.clone(),
        );
        registry.register(
            "istio_requests",
            "HTTP and gRPC requests",
            telemetry.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from a request's start to its response's end, in milliseconds",
            telemetry.request_duration.clone(),
        );
        registry.register(
            "causeway_proxy_refused_connections",
            "Connections closed without being served, by listener and reason",
            telemetry.refused.clone(),
        );
        registry.register(
            "causeway_proxy_active_connections",
            "Connections being proxied now",
            telemetry.active_connections.clone(),
        );
        Telemetry {
            registry,
            ..telemetry
        }
    }
}

impl Telemetry {
    pub fn refuse(&self, listener: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
