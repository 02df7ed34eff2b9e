//! `causeway create-remote-secret`: istioctl's command of the same name. It prints the Secret that
//! gives a control plane read access to another cluster (design brief section 3), with a token for
//! that cluster's reader service account obtained through the TokenRequest API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use causeway_lab::apiserver::config::NODE_API_PORT;
use causeway_lab::clusters::{ClusterStatus, Lab};
use clap::Args;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use causeway_install::render::READER_ACCOUNT;

#[derive(Args)]
pub struct CreateRemoteSecretArgs {
    /// The kubeconfig context of the cluster the secret gives access to
    #[arg(long)]
    context: Option<String>,
    /// The cluster's name in the mesh (the secret's key and its networking.istio.io/cluster annotation)
    #[arg(long)]
    name: Option<String>,
    /// Kubeconfig to read (default: $KUBECONFIG, else ~/.kube/config)
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// API server address the control plane should use (default: the context's server; for a lab
    /// cluster, its node's address, which control planes running in the lab reach)
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Namespace of the reader service account, and of the secret
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// The service account whose token the secret carries
    #[arg(long, default_value = READER_ACCOUNT)]
    service_account: String,
    /// Create the service account and its read-only cluster role when missing
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    create_service_account: bool,
    /// Lifetime of the token, in seconds (the remote cluster must allow it)
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    token_expiration_seconds: i64,
}

/// What the secret's kubeconfig needs.
struct RemoteAccess {
    server: String,
    ca_data: String,
    token: String,
}

pub fn run(args: CreateRemoteSecretArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let text = runtime.block_on(create(args))?;
    print!("{text}");
    Ok(())
}

async fn create(args: CreateRemoteSecretArgs) -> anyhow::Result<String> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?,
        None => Kubeconfig::read().context(
            "cannot read the kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig",
        )?,
    };
    let context_name = args
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .context("no --context given and the kubeconfig has no current context")?;
    let cluster_name = args.name.clone().unwrap_or_else(|| context_name.clone());
    let context = kubeconfig
        .contexts
        .iter()
        .find(|context| context.name == context_name)
        .and_then(|context| context.context.clone())
        .with_context(|| format!("the kubeconfig has no context {context_name:?}"))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.cluster)
        .and_then(|cluster| cluster.cluster.clone())
        .with_context(|| {
            format!(
                "the kubeconfig has no cluster {:?} (of context {context_name:?})",
                context.cluster
            )
        })?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(path)) => base64::engine::general_purpose::STANDARD.encode(
            std::fs::read(path)
                .with_context(|| format!("cannot read the cluster CA file {path}"))?,
        ),
        (None, None) => bail!(
            "cluster {:?} has no certificate authority in the kubeconfig; a remote secret needs one",
            context.cluster
        ),
    };
    let server = match args
        .server
        .clone()
        .or_else(|| cluster.server.as_deref().and_then(lab_node_server))
        .or(cluster.server.clone())
    {
        Some(server) => server,
        None => bail!(
            "cluster {:?} has no server in the kubeconfig; pass --server",
            context.cluster
        ),
    };
    let options = KubeConfigOptions {
        context: Some(context_name.clone()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("cannot use context {context_name:?}"))?;
    let client = kube::Client::try_from(config).context("cannot make a client for the cluster")?;
    let token = reader_token(&client, &args).await.with_context(|| {
        format!(
            "cannot get a token for {}/{} in context {context_name:?}",
            args.namespace, args.service_account
        )
    })?;
    Ok(render(
        &cluster_name,
        &args.namespace,
        &RemoteAccess {
            server,
            ca_data,
            token,
        },
    ))
}

/// For a running lab cluster served at `server` (its host listener on 127.0.0.1), the API server on
/// its node's address: the seeds rewrite the kubeconfig to the node's docker address so that other
/// clusters can reach it; the lab keeps the host's kubeconfig on 127.0.0.1 and embeds the node's
/// address here instead.
fn lab_node_server(server: &str) -> Option<String> {
    let lab = Lab::new(
        std::env::var_os("CAUSEWAY_LAB_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(Lab::default_root),
    );
    lab.clusters().ok()?.into_iter().find_map(|record| {
        let ClusterStatus::Running(endpoint) = lab.status(&record.name) else {
            return None;
        };
        let host = format!("https://{}", endpoint.address);
        (server.trim_end_matches('/') == host).then(|| {
            record
                .node_address
                .map(|node| format!("https://{node}:{NODE_API_PORT}"))
        })?
    })
}

async fn reader_token(
    client: &kube::Client,
    args: &CreateRemoteSecretArgs,
) -> anyhow::Result<String> {
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt(&args.namespace).await?.is_none() {
        bail!(
            "namespace {:?} does not exist in that cluster; create it first (the guides do, for cacerts)",
            args.namespace
        );
    }
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &args.namespace);
    if accounts.get_opt(&args.service_account).await?.is_none() {
        if !args.create_service_account {
            bail!(
                "service account {:?} does not exist; create it or drop --create-service-account=false",
                args.service_account
            );
        }
        create_reader(client, &args.namespace, &args.service_account).await?;
    }
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": args.token_expiration_seconds},
    }))?;
    let response: TokenRequest = accounts
        .create_subresource(
            "token",
            &args.service_account,
            &PostParams::default(),
            &request,
        )
        .await?;
    response
        .status
        .map(|status| status.token)
        .context("the TokenRequest came back without a token")
}

/// The reader service account and its read-only cluster role, as Istio's base chart makes them.
async fn create_reader(
    client: &kube::Client,
    namespace: &str,
    account: &str,
) -> anyhow::Result<()> {
    let params = PostParams::default();
    let labels = json!({"app": "istio-reader", "release": "istio"});
    let service_account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": account, "labels": labels}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&params, &service_account)
        .await?;
    let role_name = format!("istio-reader-clusterrole-{namespace}");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role_name, "labels": labels},
        "rules": causeway_install::render::reader_rules(),
    }))?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role_name, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }))?;
    for result in [
        Api::<ClusterRole>::all(client.clone())
            .create(&params, &role)
            .await
            .map(|_| ()),
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&params, &binding)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The Secret, in istioctl's layout: a kubeconfig whose cluster, context and user are all named
/// after the cluster, under `stringData.<cluster>`.
fn render(cluster: &str, namespace: &str, access: &RemoteAccess) -> String {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"certificate-authority-data": access.ca_data, "server": access.server}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
        "current-context": cluster,
        "preferences": {},
        "users": [{"name": cluster, "user": {"token": access.token}}],
    });
    let kubeconfig_text =
        serde_saphyr::to_string(&kubeconfig).expect("a kubeconfig always serializes");
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("istio-remote-secret-{cluster}"),
            "namespace": namespace,
            "labels": {"istio/multiCluster": "true"},
            "annotations": {"networking.istio.io/cluster": cluster},
        },
        "stringData": BTreeMap::from([(cluster.to_owned(), kubeconfig_text)]),
    });
    let body = serde_saphyr::to_string(&secret).expect("a secret always serializes");
    format!("# This file is autogenerated, do not edit.\n{body}---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_has_istios_names_labels_and_an_embedded_kubeconfig() {
        let access = RemoteAccess {
            server: "https://127.0.0.1:6443".into(),
            ca_data: "Q0E=".into(),
            token: "t0k3n".into(),
        };
        let text = render("cluster02", "istio-system", &access);
        let secret: serde_json::Value =
            serde_saphyr::from_str(text.trim_end_matches("---\n")).unwrap();
        assert_eq!(secret["metadata"]["name"], "istio-remote-secret-cluster02");
        assert_eq!(secret["metadata"]["labels"]["istio/multiCluster"], "true");
        assert_eq!(
            secret["metadata"]["annotations"]["networking.istio.io/cluster"],
            "cluster02"
        );
        let kubeconfig =
            Kubeconfig::from_yaml(secret["stringData"]["cluster02"].as_str().unwrap()).unwrap();
        assert_eq!(kubeconfig.current_context.as_deref(), Some("cluster02"));
        assert_eq!(kubeconfig.clusters[0].name, "cluster02");
        assert_eq!(kubeconfig.auth_infos[0].name, "cluster02");
        let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
    }
}
