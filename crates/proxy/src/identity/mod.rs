//! The workload's identity: a P-256 key made in this process, a certificate for it from
//! discovery's CA (`IstioCertificateService/CreateCertificate`, authenticated by the pod's
//! service-account token), renewed at half life. Each renewal publishes a new [`MeshTls`];
//! connections already open keep theirs, so none is dropped.

mod ca_client;
mod credentials;
mod tls;

pub use ca_client::CaSettings;
pub(crate) use ca_client::describe as describe_error;
pub use credentials::{Credentials, forwarded_client_cert, spiffe_ids};
pub use tls::{MeshTls, peer_identity};

use crate::retry::retry_delays;
use causeway_ca::SpiffeId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read the mesh root certificates: {source}; mount the `istio-ca-root-cert` ConfigMap there or pass --root-cert"
    )]
    Roots {
        #[source]
        source: causeway_ca::pem::PemError,
    },
    #[error(
        "cannot read the service-account token {path}: {source}; mount the `istio-token` projected volume there or pass --token-path"
    )]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the service-account token {path} is empty")]
    EmptyToken { path: PathBuf },
    #[error("cannot make the workload key or its CSR: {0}")]
    Key(#[from] causeway_ca::CsrError),
    #[error("cannot reach the CA at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the CA at {address} refused to sign: {message} ({code:?})")]
    Refused {
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("the CA's answer is unusable: {reason}")]
    BadResponse { reason: String },
}

/// The latest credentials, `None` until the first certificate arrives.
pub type TlsWatch = watch::Receiver<Option<Arc<MeshTls>>>;

/// Obtains the first certificate and keeps renewing it, until the returned task is aborted.
pub fn start(settings: CaSettings, identity: SpiffeId) -> (TlsWatch, tokio::task::JoinHandle<()>) {
    let (publish, watch) = watch::channel(None);
    let task = tokio::spawn(keep_fresh(settings, identity, publish));
    (watch, task)
}

async fn keep_fresh(
    settings: CaSettings,
    identity: SpiffeId,
    publish: watch::Sender<Option<Arc<MeshTls>>>,
) {
    let mut delays = retry_delays();
    loop {
        let obtained = settings
            .obtain(&identity)
            .await
            .and_then(|credentials| MeshTls::new(Arc::new(credentials)));
        match obtained {
            Ok(tls) => {
                delays = retry_delays();
                let credentials = &tls.credentials;
                let renew_at = credentials.renew_at;
                tracing::info!(
                    identity = %credentials.identity,
                    serial = %credentials.serial,
                    not_after = %time::OffsetDateTime::from(credentials.not_after),
                    renew_at = %time::OffsetDateTime::from(renew_at),
                    "workload certificate obtained"
                );
                publish.send_replace(Some(Arc::new(tls)));
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(%error, retry_in = ?delay, "no workload certificate");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
