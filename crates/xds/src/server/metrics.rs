//! The xDS server's Prometheus metrics, named as istiod names them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

impl TypeLabel {
    pub fn of(type_url: &str) -> TypeLabel {
        TypeLabel {
            r#type: crate::resources::short_name(type_url).to_ascii_lowercase(),
        }
    }
}

#[derive(Clone)]
pub struct XdsMetrics {
    /// Responses sent, by type (`pilot_xds_pushes`).
    pub pushes: Family<TypeLabel, Counter>,
    /// NACKs received, by type (`pilot_total_xds_rejects`).
    pub rejects: Family<TypeLabel, Counter>,
    /// Connected streams (`pilot_xds`).
    pub connected: Gauge,
    /// From the first change of a batch to its responses being queued on a stream
    /// (`pilot_proxy_convergence_time`, seconds).
    pub convergence: Histogram,
    /// Time to generate and queue one stream's responses to one push (`pilot_xds_push_time`).
    pub push_time: Family<TypeLabel, Histogram>,
    /// Push fan-outs that held reads back for over 100 ms, after which reading resumed before
    /// every stream had the push: a large push (a full push to many streams), or a stream stuck
    /// behind a proxy that does not read.
    pub read_gate_overrides: Counter,
    /// Writes to xDS connections' sockets: about one per connection per push (see
    /// `batched_writes`), however many streams the connection carries.
    pub socket_writes: Counter,
    /// The series of the types pushed to every stream, looked up once: a push to a thousand
    /// streams would otherwise build and hash a thousand labels per series.
    known_types: std::sync::Arc<[KnownType]>,
}

#[derive(Clone)]
struct KnownType {
    type_url: &'static str,
    pushes: Counter,
    push_time: Histogram,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

impl Default for XdsMetrics {
    fn default() -> Self {
        let pushes: Family<TypeLabel, Counter> = Family::default();
        let push_time: Family<TypeLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        let known_types = crate::resources::PUSH_ORDER
            .iter()
            .map(|type_url| KnownType {
                type_url,
                pushes: pushes.get_or_create(&TypeLabel::of(type_url)).clone(),
                push_time: push_time.get_or_create(&TypeLabel::of(type_url)).clone(),
            })
            .collect();
        XdsMetrics {
            pushes,
            rejects: Family::default(),
            connected: Gauge::default(),
            convergence: Histogram::new(latency_buckets()),
            push_time,
            read_gate_overrides: Counter::default(),
            socket_writes: Counter::default(),
            known_types,
        }
    }
}

impl XdsMetrics {
    /// Counts one response of `type_url`.
    pub fn count_push(&self, type_url: &str) {
        match self.known(type_url) {
            Some(known) => {
                known.pushes.inc();
            }
            None => {
                self.pushes.get_or_create(&TypeLabel::of(type_url)).inc();
            }
        }
    }

    /// Records how long one stream's response of `type_url` to a push took.
    pub fn observe_push_time(&self, type_url: &str, seconds: f64) {
        match self.known(type_url) {
            Some(known) => known.push_time.observe(seconds),
            None => self
                .push_time
                .get_or_create(&TypeLabel::of(type_url))
                .observe(seconds),
        }
    }

    fn known(&self, type_url: &str) -> Option<&KnownType> {
        self.known_types
            .iter()
            .find(|known| known.type_url == type_url)
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            self.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS NACKs received, by type",
            self.rejects.clone(),
        );
        registry.register("pilot_xds", "Connected xDS streams", self.connected.clone());
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a registry change to its push being queued on a stream",
            self.convergence.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds to generate and queue one stream's responses, by type",
            self.push_time.clone(),
        );
        registry.register(
            "causeway_xds_read_gate_overrides",
            "Push fan-outs that held reads from xDS connections back for over 100 ms, after \
             which reading resumed before every stream had the push (a large push, or a stream \
             stuck behind a proxy that does not read)",
            self.read_gate_overrides.clone(),
        );
        registry.register(
            "causeway_xds_socket_writes",
            "Writes to xDS connections' sockets: a push goes out to all of a connection's \
             streams in one write, unless it is 64 KiB or more; a frame of 8 KiB or more (a \
             full-state response's) goes out on its own",
            self.socket_writes.clone(),
        );
    }
}
