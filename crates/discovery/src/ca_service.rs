//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: signs a workload's CSR for the
//! identity its service-account token proves, checked by TokenReview against the cluster the
//! caller says it is in (`clusterid` header, else the control plane's own cluster).

use causeway_ca::{CertificateAuthority, SpiffeId};
use causeway_registry::ClusterClients;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use prost_types::value::Kind;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use causeway_ca::service as proto;

use proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::{IstioCertificateRequest, IstioCertificateResponse};

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

#[derive(Clone)]
pub struct CaService {
    pub authority: Arc<CertificateAuthority>,
    pub clients: ClusterClients,
    pub local_cluster: String,
    pub trust_domain: String,
    /// Audiences the token must be valid for (Istio's `TOKEN_AUDIENCES`, default `istio-ca`).
    pub audiences: Vec<String>,
}

impl CaService {
    pub fn server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    fn cluster_of(&self, request: &Request<IstioCertificateRequest>) -> String {
        let from_header = request
            .metadata()
            .get("clusterid")
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned);
        let from_metadata = || {
            let field = request
                .get_ref()
                .metadata
                .as_ref()?
                .fields
                .get("ClusterID")?;
            match field.kind.as_ref()? {
                Kind::StringValue(value) if !value.is_empty() => Some(value.clone()),
                _ => None,
            }
        };
        from_header
            .or_else(from_metadata)
            .unwrap_or_else(|| self.local_cluster.clone())
    }

    /// The caller's identity, proven by TokenReview in `cluster`.
    async fn authenticate(&self, token: &str, cluster: &str) -> Result<SpiffeId, Status> {
        let client = self.clients.get(cluster).ok_or_else(|| {
            Status::unauthenticated(format!(
                "unknown cluster `{cluster}`: the control plane has no credentials for it; add its remote secret or send the right `clusterid`"
            ))
        })?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(client)
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| {
                Status::unavailable(format!("cannot review the token with cluster `{cluster}`'s API server: {error}; retry later"))
            })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status.error.unwrap_or_else(|| "no reason given".into());
            return Err(Status::unauthenticated(format!(
                "cluster `{cluster}` did not authenticate the token: {reason}"
            )));
        }
        let username = status
            .user
            .and_then(|user| user.username)
            .unwrap_or_default();
        let (namespace, account) = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "`{username}` is not a service account; only workloads' service-account tokens get certificates"
                ))
            })?;
        SpiffeId::new(&self.trust_domain, namespace, account).map_err(|error| {
            Status::permission_denied(format!("no identity for `{username}`: {error}"))
        })
    }
}

fn bearer_token<T>(request: &Request<T>) -> Result<String, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "no `authorization: Bearer <token>` header: send the workload's service-account token",
        )
    })?;
    let text = header
        .to_str()
        .map_err(|_| Status::unauthenticated("the `authorization` header is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("the `authorization` header must be `Bearer <token>`")
        })?;
    Ok(token.to_owned())
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = bearer_token(&request)?;
        let cluster = self.cluster_of(&request);
        let identity = self.authenticate(&token, &cluster).await?;
        let body = request.into_inner();
        let ttl =
            (body.validity_duration > 0).then(|| time::Duration::seconds(body.validity_duration));
        let authority = self.authority.clone();
        let for_identity = identity.clone();
        // Signing is CPU work (RSA keys especially): keep it off the I/O threads.
        let signed = tokio::task::spawn_blocking(move || {
            authority.sign_csr(body.csr.as_bytes(), &for_identity, ttl)
        })
        .await
        .map_err(|_| Status::internal("the signing task failed"))?
        .map_err(|error| {
            Status::invalid_argument(format!("cannot sign the CSR for {identity}: {error}"))
        })?;
        tracing::info!(%identity, %cluster, not_after = %signed.not_after, "signed a workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: signed.cert_chain,
        }))
    }
}
