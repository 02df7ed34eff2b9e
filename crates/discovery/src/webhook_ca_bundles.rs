//! The `caBundle` of the injection webhooks, kept equal to the roots that signed discovery's
//! serving certificate, as istiod keeps it, so that the API server trusts 15017.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::{ListParams, PostParams};

/// Sets `caBundle` on `revision`'s injection webhooks that call discovery in `namespace`.
pub async fn keep(
    client: &kube::Client,
    namespace: &str,
    revision: &str,
    roots_pem: &str,
) -> Result<(), kube::Error> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let selector = format!("app=sidecar-injector,istio.io/rev={revision}");
    let bundle = ByteString(roots_pem.as_bytes().to_vec());
    for mut configuration in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let mut changed = false;
        for webhook in configuration.webhooks.iter_mut().flatten() {
            let ours = webhook
                .client_config
                .service
                .as_ref()
                .is_some_and(|service| service.namespace == namespace);
            if ours && webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if changed {
            let name = configuration.metadata.name.clone().unwrap_or_default();
            match api
                .replace(&name, &PostParams::default(), &configuration)
                .await
            {
                Ok(_) => tracing::info!(webhook = %name, "caBundle set to the mesh roots"),
                // Someone wrote it meanwhile: the next round sees their version.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}
