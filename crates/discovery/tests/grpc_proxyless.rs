//! A real proxyless gRPC client (grpcio from PyPI, installed by scripts/test) resolves
//! `xds:///helloworld.sample.svc.cluster.local:5000` through `causeway discovery` and reaches
//! backends registered in two clusters, round robin; a backend whose pod turns unready stops
//! getting calls within a second.

mod common;

use causeway_lab::testing::fixtures;
use common::{MeshOptions, WAIT, get, two_cluster_mesh_with};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/grpc")
        .join(name)
}

/// A child process killed when the test ends, however it ends.
struct Process {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(args: &[&str], env: &[(&str, &str)]) -> (Process, mpsc::Receiver<(Instant, String)>) {
    let mut command = Command::new("python3");
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .expect("python3 runs (scripts/test installs grpcio from testdata/grpc/requirements.txt)");
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    (
        Process {
            child,
            _stdin: stdin,
        },
        received,
    )
}

fn next_line(lines: &mpsc::Receiver<(Instant, String)>, what: &str) -> (Instant, String) {
    lines
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no output from the {what} within {WAIT:?}; is grpcio installed (pip install -r testdata/grpc/requirements.txt)?"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_xds_client_balances_across_clusters_and_drops_an_unready_backend_within_a_second() {
    let mesh = two_cluster_mesh_with(MeshOptions {
        network2: "network1",
        v1_ip: "127.0.0.2",
        v2_ip: "127.0.0.3",
        ..MeshOptions::default()
    })
    .await;
    let mut backends = Vec::new();
    for (address, name) in [("127.0.0.2:5000", "v1"), ("127.0.0.3:5000", "v2")] {
        let (process, lines) = python(
            &[script("backend.py").to_str().unwrap(), address, name],
            &[],
        );
        let (_, line) = next_line(&lines, "backend");
        assert_eq!(line, "ready", "backend {name} on {address}");
        backends.push(process);
    }

    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.json");
    let config = json!({
        "xds_servers": [{"server_uri": mesh.discovery.xds_address.to_string(),
                         "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": "sidecar~127.0.0.9~grpc-client-1.sample~sample.svc.cluster.local",
                 "metadata": {"GENERATOR": "grpc", "NAMESPACE": "sample", "CLUSTER_ID": "cluster01", "NETWORK": "network1"},
                 "locality": {}}
    });
    std::fs::File::create(&bootstrap)
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let (_client, lines) = python(
        &[
            script("xds_client.py").to_str().unwrap(),
            "xds:///helloworld.sample.svc.cluster.local:5000",
            "5",
            "6000",
        ],
        &[("GRPC_XDS_BOOTSTRAP", bootstrap.to_str().unwrap())],
    );

    // Round robin: once both backends answer, forty calls split evenly.
    let mut seen_both = (false, false);
    while !(seen_both.0 && seen_both.1) {
        let (_, line) = next_line(&lines, "gRPC client");
        seen_both.0 |= line == "ok v1";
        seen_both.1 |= line == "ok v2";
    }
    let mut counts = (0, 0);
    for _ in 0..40 {
        match next_line(&lines, "gRPC client").1.as_str() {
            "ok v1" => counts.0 += 1,
            "ok v2" => counts.1 += 1,
            other => panic!("unexpected call result `{other}`"),
        }
    }
    assert!(
        (18..=22).contains(&counts.0),
        "round robin across clusters: {counts:?}"
    );

    // The client is a connected proxy whose every type is ACKed.
    let (_, syncz) = get(mesh.discovery.monitoring_address, "/debug/syncz").await;
    let client = syncz
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy_type"] == "grpc")
        .expect("the gRPC client in syncz");
    for short in ["LDS", "RDS", "CDS", "EDS"] {
        assert_eq!(
            client["types"][short]["state"], "SYNCED",
            "{short}: {client}"
        );
    }

    // v1's pod goes unready: within a second, every call goes to v2.
    fixtures::set_pod(&mesh.client01, "sample", "helloworld-v1", None, false).await;
    let unready_at = Instant::now();
    let mut last_v1 = None;
    let mut v2_after = 0;
    while unready_at.elapsed() < Duration::from_millis(1500) {
        let (at, line) = next_line(&lines, "gRPC client");
        match line.as_str() {
            "ok v1" => last_v1 = Some(at.duration_since(unready_at)),
            "ok v2" if at.duration_since(unready_at) > Duration::from_secs(1) => v2_after += 1,
            "ok v2" => {}
            other => panic!("a call failed while v2 was healthy: `{other}`"),
        }
    }
    if let Some(last) = last_v1 {
        assert!(
            last < Duration::from_secs(1),
            "v1 still got a call {last:?} after its pod turned unready"
        );
    }
    assert!(v2_after > 10, "v2 takes all the calls: {v2_after}");
    drop(backends);
}
