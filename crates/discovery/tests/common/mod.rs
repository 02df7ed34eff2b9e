//! The two-cluster mesh of `causeway_discovery::testing::mesh`, and an HTTP getter for the
//! monitoring port.
#![allow(dead_code)]

pub use causeway_discovery::testing::mesh::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the monitoring port, as JSON (or text under `"text"` when not JSON).
pub async fn get(address: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|_| json!({"text": body}));
    (status, body)
}

/// `kubectl annotate namespace istio-system topology.istio.io/controlPlaneClusters=<clusters>`.
pub async fn name_control_planes(client: &kube::Client, clusters: &str) {
    let annotation =
        json!({"metadata": {"annotations": {"topology.istio.io/controlPlaneClusters": clusters}}});
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            "istio-system",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&annotation),
        )
        .await
        .unwrap();
}
