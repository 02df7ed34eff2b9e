//! `causeway proxy sidecar` and `causeway proxy router`: flags named after, and environment
//! variables as set by, Istio's sidecar injector and gateway charts, so that an injected pod
//! spec or the east-west gateway's Deployment runs them unchanged.

use anyhow::Context;
use causeway_proxy::access_log::Encoding;
use causeway_proxy::ads::{AdsSettings, Protocol};
use causeway_proxy::bootstrap::{Role, Workload, parse_labels_file};
use causeway_proxy::drain::{DEFAULT_TERMINATION_DRAIN_DURATION, DrainPolicy};
use causeway_proxy::identity::CaSettings;
use causeway_proxy::launch::AccessLogSettings;
use causeway_proxy::launch::{Listen, ProxySettings};
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum XdsProtocol {
    Delta,
    Sotw,
}

/// What sidecars and routers share.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Discovery's xDS address; port 15010 means plaintext, anything else TLS verified with the
    /// mesh root (Istio's `discoveryAddress`)
    #[arg(
        long,
        env = "DISCOVERY_ADDRESS",
        default_value = "istiod.istio-system.svc:15012"
    )]
    discovery_address: String,
    /// The name discovery's certificate must carry (default: the host of the address)
    #[arg(long)]
    discovery_server_name: Option<String>,
    /// The CA's address (Istio's `CA_ADDR`); default: discovery's address, or its port 15012
    /// when xDS is plaintext
    #[arg(long, env = "CA_ADDR")]
    ca_address: Option<String>,
    /// This pod's cluster
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// This pod's network
    #[arg(long, env = "ISTIO_META_NETWORK", default_value = "")]
    network: String,
    #[arg(long, env = "ISTIO_META_MESH_ID", default_value = "")]
    mesh_id: String,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    domain_suffix: String,
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: String,
    #[arg(long, env = "INSTANCE_IP")]
    pod_ip: IpAddr,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// The owning workload's name, for metrics (default: from the pod name)
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME", default_value = "")]
    workload_name: String,
    /// Pod labels as the downward API writes them (`key="value"` lines)
    #[arg(long, default_value = "/etc/istio/pod/labels")]
    labels_file: PathBuf,
    /// Pod labels as JSON (Istio's `ISTIO_METAJSON_LABELS`)
    #[arg(long, env = "ISTIO_METAJSON_LABELS")]
    labels_json: Option<String>,
    /// A pod label, `key=value` (repeatable)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The mesh root certificates (the `istio-ca-root-cert` ConfigMap)
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,
    #[arg(long, value_enum, default_value = "delta")]
    xds_protocol: XdsProtocol,
    /// The socket mark on a sidecar's own connections (capture lets them pass); a router, never
    /// captured, marks nothing
    #[arg(long, default_value_t = 1337)]
    proxy_mark: u32,
    /// `meshConfig.accessLogFile` (`/dev/stdout` for the container log); no access log if unset
    #[arg(long, env = "ACCESS_LOG_FILE")]
    access_log_file: Option<String>,
    /// `meshConfig.accessLogFormat`; Istio's default text format (or JSON fields) if unset
    #[arg(long, env = "ACCESS_LOG_FORMAT")]
    access_log_format: Option<String>,
    /// `meshConfig.accessLogEncoding`: TEXT, or JSON for Envoy's typed `json_format` lines
    #[arg(long, env = "ACCESS_LOG_ENCODING", default_value = "TEXT", value_parser = parse_encoding)]
    access_log_encoding: Encoding,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value_t = 15090)]
    stats_port: u16,
    #[arg(long, default_value_t = 15020)]
    status_port: u16,
    #[arg(long, default_value_t = 15021)]
    health_port: u16,
    /// Worker threads (Istio's `concurrency`)
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// The pod's proxy configuration as the injector writes it (JSON); its
    /// `terminationDrainDuration` is read
    #[arg(long, env = "PROXY_CONFIG")]
    proxy_config: Option<String>,
    /// How long the drain after SIGTERM lasts (default: `PROXY_CONFIG`'s
    /// `terminationDrainDuration`, else 5s)
    #[arg(long, value_parser = parse_duration)]
    termination_drain_duration: Option<Duration>,
    /// End the drain as soon as no connection is left (Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`)
    #[arg(long, env = "EXIT_ON_ZERO_ACTIVE_CONNECTIONS", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    exit_on_zero_active_connections: bool,
    /// With `--exit-on-zero-active-connections`, the shortest drain (Istio's `MINIMUM_DRAIN_DURATION`)
    #[arg(long, env = "MINIMUM_DRAIN_DURATION", default_value = "5s", value_parser = parse_duration)]
    minimum_drain_duration: Duration,
}

#[derive(Args, Debug)]
pub struct SidecarArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The pod's service-account token for the CA (the `istio-token` projected volume)
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_path: PathBuf,
    /// Requested workload certificate lifetime (Istio's `SECRET_TTL`), e.g. `24h`, `90m`, `30s`
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Answer DNS on the DNS port (Istio's `ISTIO_META_DNS_CAPTURE`)
    #[arg(long, env = "ISTIO_META_DNS_CAPTURE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    capture_dns: bool,
    /// Resolvers for names outside the mesh (default: `nameserver` lines of /etc/resolv.conf)
    #[arg(long, value_delimiter = ',')]
    upstream_dns: Vec<SocketAddr>,
    /// How long inbound waits for a client's first bytes on a PERMISSIVE port before taking the
    /// connection as plaintext
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    protocol_detection_timeout: Duration,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15053)]
    dns_port: u16,
}

#[derive(Args, Debug)]
pub struct RouterArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Must be `sni-dnat`, the east-west gateway's mode (Istio's `ISTIO_META_ROUTER_MODE`)
    #[arg(long, env = "ISTIO_META_ROUTER_MODE", default_value = "sni-dnat")]
    router_mode: String,
    /// Networks whose endpoints this gateway serves, comma-separated (Istio's
    /// `ISTIO_META_REQUESTED_NETWORK_VIEW`; default: its own network)
    #[arg(long, env = "ISTIO_META_REQUESTED_NETWORK_VIEW", value_delimiter = ',')]
    requested_network_view: Vec<String>,
    /// Where the router ports (15443, ...) are bound
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 24h, 90m, 30s or 500ms"))?;
    let unit_seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit; use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs(number * unit_seconds))
}

/// A protobuf JSON duration as `PROXY_CONFIG` carries them (`"5s"`, `"2.500s"`).
fn parse_json_duration(text: &str) -> Result<Duration, String> {
    text.strip_suffix('s')
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a duration in seconds such as \"5s\""))
}

/// When a draining proxy exits: the flag, else `PROXY_CONFIG`'s `terminationDrainDuration`,
/// else Istio's 5 s.
fn drain_policy(args: &CommonArgs) -> anyhow::Result<DrainPolicy> {
    let from_proxy_config = match &args.proxy_config {
        Some(json) if !json.trim().is_empty() => {
            let config: serde_json::Value = serde_json::from_str(json).context(
                "PROXY_CONFIG / --proxy-config is not JSON; the injector writes it as JSON",
            )?;
            match config.get("terminationDrainDuration") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(text)) => {
                    Some(parse_json_duration(text).map_err(|e| {
                        anyhow::anyhow!("PROXY_CONFIG terminationDrainDuration: {e}")
                    })?)
                }
                Some(other) => anyhow::bail!(
                    "PROXY_CONFIG terminationDrainDuration is {other}; write a duration such as \"5s\""
                ),
            }
        }
        _ => None,
    };
    Ok(DrainPolicy {
        termination_drain_duration: args
            .termination_drain_duration
            .or(from_proxy_config)
            .unwrap_or(DEFAULT_TERMINATION_DRAIN_DURATION),
        exit_on_zero_active: args.exit_on_zero_active_connections,
        minimum_drain_duration: args.minimum_drain_duration,
    })
}

fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    }
}

fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

fn labels(args: &CommonArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    if args.labels_file.exists() {
        let text = std::fs::read_to_string(&args.labels_file)
            .with_context(|| format!("cannot read {}", args.labels_file.display()))?;
        labels.extend(
            parse_labels_file(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", args.labels_file.display()))?,
        );
    }
    if let Some(json) = &args.labels_json {
        let parsed: BTreeMap<String, String> = serde_json::from_str(json)
            .context("ISTIO_METAJSON_LABELS / --labels-json must be a JSON object of strings")?;
        labels.extend(parsed);
    }
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("--label `{label}` is not key=value"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

fn resolv_conf_servers(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn plaintext(args: &CommonArgs) -> bool {
    port_of(&args.discovery_address) == Some(15010)
}

/// The settings both roles share; the caller fills in the role's own.
fn parse_encoding(text: &str) -> Result<Encoding, String> {
    Encoding::parse(text).map_err(|error| error.to_string())
}

fn common_settings(args: &CommonArgs, role: Role) -> anyhow::Result<ProxySettings> {
    // A gateway pod has no capture rules to steer its own connections past, and marking needs
    // CAP_NET_ADMIN, which Istio's gateway pods drop: only a sidecar marks.
    let mark = if role == Role::Sidecar {
        args.proxy_mark
    } else {
        0
    };
    let server_name = args
        .discovery_server_name
        .clone()
        .unwrap_or_else(|| host_of(&args.discovery_address).to_owned());
    let workload = Workload {
        role,
        pod_name: args.pod_name.clone(),
        namespace: args.pod_namespace.clone(),
        ip: args.pod_ip,
        service_account: args.service_account.clone(),
        cluster_id: args.cluster_id.clone(),
        network: args.network.clone(),
        mesh_id: args.mesh_id.clone(),
        trust_domain: args.trust_domain.clone(),
        domain_suffix: args.domain_suffix.clone(),
        labels: labels(args)?,
        workload_name: args.workload_name.clone(),
        requested_network_view: Vec::new(),
    };
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Ok(ProxySettings {
        ads: AdsSettings {
            address: args.discovery_address.clone(),
            tls_server_name: (!plaintext(args)).then_some(server_name),
            root_cert: args.root_cert.clone(),
            node: workload.node(),
            protocol: match args.xds_protocol {
                XdsProtocol::Delta => Protocol::Delta,
                XdsProtocol::Sotw => Protocol::StateOfTheWorld,
            },
            mark,
        },
        ca: None,
        workload,
        listen: Listen {
            admin: local(args.admin_port),
            prometheus: any(args.stats_port),
            merged: any(args.status_port),
            health: any(args.health_port),
            ..Listen::default()
        },
        mark,
        access_log: args
            .access_log_file
            .clone()
            .filter(|path| !path.is_empty())
            .map(|path| AccessLogSettings {
                path,
                format: args.access_log_format.clone(),
                encoding: args.access_log_encoding,
            }),
        protocol_detection_timeout: Duration::from_secs(1),
        upstream_dns: Vec::new(),
        trim_resident_pages: true,
    })
}

fn sidecar_settings(args: &SidecarArgs) -> anyhow::Result<ProxySettings> {
    let common = &args.common;
    let mut settings = common_settings(common, Role::Sidecar)?;
    let ca_address = common.ca_address.clone().unwrap_or_else(|| {
        if plaintext(common) {
            format!("{}:15012", host_of(&common.discovery_address))
        } else {
            common.discovery_address.clone()
        }
    });
    settings.ca = Some(CaSettings {
        server_name: common
            .discovery_server_name
            .clone()
            .unwrap_or_else(|| host_of(&ca_address).to_owned()),
        address: ca_address,
        root_cert: common.root_cert.clone(),
        token_path: args.token_path.clone(),
        cluster_id: common.cluster_id.clone(),
        ttl: args.cert_ttl,
        mark: common.proxy_mark,
    });
    settings.listen.outbound = SocketAddr::from(([0, 0, 0, 0], args.outbound_port));
    settings.listen.inbound = SocketAddr::from(([0, 0, 0, 0], args.inbound_port));
    settings.listen.dns = args
        .capture_dns
        .then(|| SocketAddr::from(([127, 0, 0, 1], args.dns_port)));
    settings.protocol_detection_timeout = args.protocol_detection_timeout;
    settings.upstream_dns = if args.upstream_dns.is_empty() {
        resolv_conf_servers(Path::new("/etc/resolv.conf"))
    } else {
        args.upstream_dns.clone()
    };
    Ok(settings)
}

fn router_settings(args: &RouterArgs) -> anyhow::Result<ProxySettings> {
    if args.router_mode != "sni-dnat" {
        anyhow::bail!(
            "router mode `{}` is not supported: the east-west gateway runs `sni-dnat`",
            args.router_mode
        );
    }
    let mut settings = common_settings(&args.common, Role::Router)?;
    settings.workload.requested_network_view = args
        .requested_network_view
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    settings.ads.node = settings.workload.node();
    settings.listen.outbound = SocketAddr::new(args.bind, 0);
    settings.listen.dns = None;
    Ok(settings)
}

fn serve(settings: ProxySettings, workers: usize, drain: DrainPolicy) -> anyhow::Result<()> {
    causeway_proxy::resident::no_fault_around();
    crate::logging::init();
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut proxy = causeway_proxy::launch::start(settings).await?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?;
        tokio::select! {
            _ = proxy.wait() => anyhow::bail!("a proxy task stopped unexpectedly"),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => {}
        }
        // Kubernetes stops a pod with SIGTERM: let callers go elsewhere first. A second signal
        // ends the drain at once.
        tokio::select! {
            () = proxy.drain(drain) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => tracing::info!("second SIGTERM: drain cut short"),
        }
        Ok(())
    })
}

pub fn run_sidecar(args: SidecarArgs) -> anyhow::Result<()> {
    let settings = sidecar_settings(&args)?;
    serve(
        settings,
        args.common.concurrency,
        drain_policy(&args.common)?,
    )
}

pub fn run_router(args: RouterArgs) -> anyhow::Result<()> {
    let settings = router_settings(&args)?;
    serve(
        settings,
        args.common.concurrency,
        drain_policy(&args.common)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_istios() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("1d").unwrap_err().contains("`d`"));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn the_drain_follows_the_flag_then_proxy_config_then_istios_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "sidecar",
                "--pod-name",
                "p",
                "--pod-namespace",
                "n",
                "--pod-ip",
                "10.0.0.1",
            ];
            argv.extend_from_slice(extra);
            drain_policy(&Cli::try_parse_from(argv).expect("flags parse").common)
        };
        let s = Duration::from_secs;
        let table: [(&[&str], Duration, bool); 5] = [
            (&[], s(5), false),
            (
                &["--proxy-config", r#"{"terminationDrainDuration":"12s"}"#],
                s(12),
                false,
            ),
            (
                &["--proxy-config", r#"{"terminationDrainDuration":"2.500s"}"#],
                Duration::from_millis(2500),
                false,
            ),
            (
                &[
                    "--proxy-config",
                    r#"{"terminationDrainDuration":"12s"}"#,
                    "--termination-drain-duration",
                    "1s",
                ],
                s(1),
                false,
            ),
            (
                &["--exit-on-zero-active-connections", "--proxy-config", "{}"],
                s(5),
                true,
            ),
        ];
        for (flags, duration, on_zero) in table {
            let policy = parse(flags).unwrap();
            assert_eq!(policy.termination_drain_duration, duration, "{flags:?}");
            assert_eq!(policy.exit_on_zero_active, on_zero, "{flags:?}");
        }
        let error =
            parse(&["--proxy-config", r#"{"terminationDrainDuration":"soon"}"#]).unwrap_err();
        assert!(error.to_string().contains("`soon`"), "{error}");
        let error = parse(&["--proxy-config", "{not json"]).unwrap_err();
        assert!(error.to_string().contains("PROXY_CONFIG"), "{error}");
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            host_of("istiod.istio-system.svc:15012"),
            "istiod.istio-system.svc"
        );
        assert_eq!(port_of("10.0.0.1:15010"), Some(15010));
        assert_eq!(host_of("[::1]:15012"), "::1");
    }
}
