//! Readiness, liveness and startup probes, as the kubelet runs them: `httpGet` (2xx and 3xx
//! pass; HTTPS without checking the certificate, as the kubelet does), `tcpSocket` (a connection
//! opens) and `exec` (the command exits 0), after `initialDelaySeconds`, every `periodSeconds`,
//! each try given `timeoutSeconds`; a result changes after `successThreshold` or
//! `failureThreshold` tries in a row. Connections leave from the node, as the kubelet's do.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// A probe's verdict changed.
#[derive(Debug, Clone)]
pub struct ProbeChange {
    pub container: String,
    /// The container instance the probe ran against.
    pub container_id: String,
    pub kind: ProbeKind,
    pub passing: bool,
    /// Why the last try failed.
    pub message: Option<String>,
}

/// Runs a command in the container for `exec` probes; its exit code and output.
pub type ExecRunner = Arc<
    dyn Fn(
            Vec<String>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<(i32, String), String>> + Send>>
        + Send
        + Sync,
>;

/// What a probe needs to reach its container.
#[derive(Clone)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    pub container_id: String,
    pub exec: ExecRunner,
}

/// A port a probe names: a number, or a container port's name.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => {
            u16::try_from(*number).map_err(|_| format!("invalid port {number}"))
        }
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|candidate| candidate.name.as_deref() == Some(name.as_str()))
            .and_then(|candidate| u16::try_from(candidate.container_port).ok())
            .ok_or_else(|| {
                format!(
                    "port {name:?} is not a port of container {}",
                    container.name
                )
            }),
    }
}

/// One try; `Err` says why it failed.
pub async fn try_once(probe: &Probe, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(
        probe
            .timeout_seconds
            .unwrap_or(1)
            .max(1)
            .unsigned_abs()
            .into(),
    );
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let port = port(&http.port, &target.container)?;
            let host = http
                .host
                .as_deref()
                .filter(|host| !host.is_empty())
                .map_or(Ok(target.pod_ip), |host| {
                    host.parse::<Ipv4Addr>()
                        .map_err(|_| format!("cannot resolve probe host {host}"))
                })?;
            let path = http
                .path
                .as_deref()
                .filter(|path| !path.is_empty())
                .unwrap_or("/");
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for header in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", header.name, header.value));
            }
            request.push_str("\r\n");
            let address = SocketAddr::from((host, port));
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|error| format!("Get \"http://{address}{path}\": {error}"))?;
            let status = if http.scheme.as_deref() == Some("HTTPS") {
                let connector = tokio_rustls::TlsConnector::from(insecure_tls());
                let name =
                    rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::V4(host).into());
                let mut tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|error| format!("Get \"https://{address}{path}\": {error}"))?;
                status_of(&mut tls, &request).await
            } else {
                let mut stream = stream;
                status_of(&mut stream, &request).await
            }
            .map_err(|error| format!("Get \"http://{address}{path}\": {error}"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = port(&tcp.port, &target.container)?;
            let host = tcp
                .host
                .as_deref()
                .and_then(|host| host.parse::<Ipv4Addr>().ok())
                .unwrap_or(target.pod_ip);
            tokio::net::TcpStream::connect((host, port))
                .await
                .map(drop)
                .map_err(|error| format!("dial tcp {host}:{port}: {error}"))
        } else if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let (code, output) = (target.exec)(command).await?;
            if code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "command exited with code {code}: {}",
                    output.trim()
                ))
            }
        } else {
            Err("the probe has no handler the lab runs (httpGet, tcpSocket, exec)".to_owned())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

async fn status_of(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    request: &str,
) -> std::io::Result<u16> {
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while head.len() < 1024 && !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response: {:?}", line.trim())))
}

/// A client configuration that accepts any certificate: the kubelet's HTTPS probes do not check
/// them.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            certificate: &rustls_pki_types::CertificateDer<'_>,
            signature: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                certificate,
                signature,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            certificate: &rustls_pki_types::CertificateDer<'_>,
            signature: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                certificate,
                signature,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default versions are supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Runs `probe` against `target` until the task is dropped, reporting each change of verdict.
/// Readiness starts failing (not ready until a try passes); liveness and startup start passing.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: Target,
    changes: mpsc::UnboundedSender<ProbeChange>,
) {
    let seconds = |value: Option<i32>, default: i32| {
        Duration::from_secs(value.unwrap_or(default).max(0).unsigned_abs().into())
    };
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0)).await;
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let successes_needed = probe.success_threshold.unwrap_or(1).max(1);
    let failures_needed = probe.failure_threshold.unwrap_or(3).max(1);
    let mut passing = kind != ProbeKind::Readiness;
    let (mut successes, mut failures) = (0, 0);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = try_once(&probe, &target).await;
        let message = result.as_ref().err().cloned();
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(_) => {
                failures += 1;
                successes = 0;
            }
        }
        let now_passing = if passing {
            failures < failures_needed
        } else {
            successes >= successes_needed
        };
        // A failing try is reported even before the threshold, for the `Unhealthy` event.
        if now_passing != passing || message.is_some() {
            passing = now_passing;
            let change = ProbeChange {
                container: target.container.name.clone(),
                container_id: target.container_id.clone(),
                kind,
                passing,
                message,
            };
            if changes.send(change).is_err() {
                return;
            }
        }
        if kind == ProbeKind::Startup && passing && successes >= successes_needed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(exit: i32) -> Target {
        let container: Container = serde_json::from_value(
            json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        Target {
            pod_ip: Ipv4Addr::LOCALHOST,
            container,
            container_id: "id".into(),
            exec: Arc::new(move |_| Box::pin(async move { Ok((exit, "out".to_owned())) })),
        }
    }

    fn probe(value: serde_json::Value) -> Probe {
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test]
    async fn http_tcp_and_exec_tries_pass_and_fail_like_the_kubelets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    let read = stream.read(&mut buffer).await.unwrap();
                    let request = String::from_utf8_lossy(&buffer[..read]).to_string();
                    let status = if request.starts_with("GET /healthy ") {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let healthy = probe(json!({"httpGet": {"path": "/healthy", "port": port}}));
        assert_eq!(try_once(&healthy, &target(0)).await, Ok(()));
        let sick = probe(json!({"httpGet": {"path": "/sick", "port": port}}));
        assert_eq!(
            try_once(&sick, &target(0)).await,
            Err("HTTP probe failed with statuscode: 503".to_owned())
        );
        let open = probe(json!({"tcpSocket": {"port": port}}));
        assert_eq!(try_once(&open, &target(0)).await, Ok(()));
        let closed = probe(json!({"tcpSocket": {"port": "http"}}));
        assert!(
            try_once(&closed, &target(0))
                .await
                .unwrap_err()
                .contains("127.0.0.1:8080")
        );
        let named = probe(json!({"httpGet": {"port": "grpc"}}));
        assert!(
            try_once(&named, &target(0))
                .await
                .unwrap_err()
                .contains("\"grpc\" is not a port")
        );
        let exec = probe(json!({"exec": {"command": ["true"]}}));
        assert_eq!(try_once(&exec, &target(0)).await, Ok(()));
        assert!(
            try_once(&exec, &target(1))
                .await
                .unwrap_err()
                .contains("exited with code 1")
        );
    }

    #[tokio::test]
    async fn verdicts_change_after_their_thresholds() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let failing = probe(
            json!({"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}),
        );
        let task = tokio::spawn(run(ProbeKind::Liveness, failing, target(1), sender));
        let first = receiver.recv().await.unwrap();
        assert!(first.passing, "one failure is below the threshold");
        assert!(first.message.is_some());
        let second = receiver.recv().await.unwrap();
        assert!(!second.passing);
        task.abort();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let ready = probe(json!({"exec": {"command": ["true"]}, "periodSeconds": 1}));
        let task = tokio::spawn(run(ProbeKind::Readiness, ready, target(0), sender));
        assert!(receiver.recv().await.unwrap().passing);
        task.abort();
    }
}
