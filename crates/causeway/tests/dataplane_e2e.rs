//! The seeds' promise, end to end, in network namespaces built here: a plain
//! `curl http://helloworld.sample:5000/hello` in a pod with a sidecar (DNS and capture, no proxy
//! settings in curl) gets helloworld's answer over mutual TLS. Discovery and the lab API servers
//! run in a control-plane namespace; every proxy is a real `causeway proxy sidecar` process.
//! Needs root (CI is root).

use causeway_discovery::testing::mesh::{MeshOptions, two_cluster_mesh_with};
use causeway_lab::netns::Namespace;
use causeway_lab::testing::fixtures;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const CAUSEWAY: &str = env!("CARGO_BIN_EXE_causeway");
const CONTROL_IP: &str = "10.0.1.1";
const WAIT: Duration = Duration::from_secs(40);

/// A workload certificate and key (PEM) signed by the mesh CA, for clients like openssl.
pub struct IssuedPair {
    pub cert: String,
    pub key: String,
}

enum Command {
    /// Apply a manifest (YAML text) to cluster01 in `namespace`.
    Apply {
        yaml: String,
        namespace: String,
        done: std::sync::mpsc::Sender<()>,
    },
    /// Stop discovery (the API servers stay).
    StopDiscovery { done: std::sync::mpsc::Sender<()> },
    /// Start discovery again, on the same ports.
    StartDiscovery { done: std::sync::mpsc::Sender<()> },
}

/// What the control plane hands the pods, and a line to it.
pub struct ControlPlane {
    /// Discovery's TLS port (it listens on every address of its namespace).
    pub secure_port: u16,
    pub roots_pem: String,
    tokens: Vec<(String, String)>,
    /// `sleep`'s identity, valid for an hour.
    pub valid: IssuedPair,
    /// `sleep`'s identity, valid for one second from the start.
    pub expiring: IssuedPair,
    /// When `expiring` has expired.
    pub expired_after: Instant,
    commands: Option<tokio::sync::mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<Result<(), causeway_lab::netns::NetnsError>>>,
}

impl ControlPlane {
    /// A token of `account` in `sample`, signed by `cluster`'s API server.
    pub fn token(&self, cluster: &str, account: &str) -> &str {
        let key = format!("{cluster}/{account}");
        &self
            .tokens
            .iter()
            .find(|(name, _)| *name == key)
            .expect("a token was made for the account")
            .1
    }

    /// `kubectl --context cluster01 apply -n <namespace> -f -`, waiting until it is stored.
    pub fn apply(&self, namespace: &str, yaml: &str) {
        let (done, applied) = std::sync::mpsc::channel();
        self.commands
            .as_ref()
            .expect("running")
            .send(Command::Apply {
                yaml: yaml.to_owned(),
                namespace: namespace.to_owned(),
                done,
            })
            .expect("the control plane runs");
        applied.recv_timeout(WAIT).expect("the manifest is applied");
    }

    fn command(&self, make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Command) {
        let (done, finished) = std::sync::mpsc::channel();
        self.commands
            .as_ref()
            .expect("running")
            .send(make(done))
            .expect("the control plane runs");
        finished
            .recv_timeout(WAIT)
            .expect("the control plane did it");
    }

    pub fn stop_discovery(&self) {
        self.command(|done| Command::StopDiscovery { done });
    }

    pub fn start_discovery(&self) {
        self.command(|done| Command::StartDiscovery { done });
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn issue(mesh: &causeway_discovery::testing::mesh::Mesh, ttl: time::Duration) -> IssuedPair {
    let identity = causeway_ca::SpiffeId::new("cluster.local", "sample", "sleep").unwrap();
    let key = causeway_ca::WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&identity).unwrap();
    let signed = mesh
        .discovery
        .authority
        .sign_csr(csr.as_bytes(), &identity, Some(ttl))
        .unwrap();
    IssuedPair {
        cert: signed.cert_chain.concat(),
        key: key.private_key_pem(),
    }
}

/// Runs both lab API servers and discovery inside `namespace` (discovery on every address of
/// it), and applies `manifests` (the seeds' `expose-services.yaml`, say) to cluster01's
/// `istio-system`.
fn start_control_plane(
    namespace: &Namespace,
    options: MeshOptions,
    manifests: &[&'static str],
) -> ControlPlane {
    let manifests: Vec<&'static str> = manifests.to_vec();
    let (ready, started) = std::sync::mpsc::channel();
    let (commands, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Command>();
    let thread = namespace.spawn_inside(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let mesh = two_cluster_mesh_with(options).await;
            for manifest in manifests {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../testdata/samples")
                    .join(manifest);
                let text = std::fs::read_to_string(&path).expect("the sample exists");
                apply(&mesh.client01, "istio-system", &text).await;
            }
            let mut tokens = Vec::new();
            for (cluster, client, account) in [
                ("cluster01", &mesh.client01, "sleep"),
                ("cluster01", &mesh.client01, "helloworld"),
                ("cluster02", &mesh.client02, "helloworld"),
            ] {
                let token =
                    fixtures::service_account_token(client, "sample", account, &["istio-ca"]).await;
                tokens.push((format!("{cluster}/{account}"), token));
            }
            let valid = issue(&mesh, time::Duration::hours(1));
            let expiring = issue(&mesh, time::Duration::seconds(1));
            ready
                .send((
                    mesh.discovery.secure_xds_address.port(),
                    mesh.discovery.roots_pem(),
                    tokens,
                    valid,
                    expiring,
                ))
                .expect("the test waits");
            let causeway_discovery::testing::mesh::Mesh {
                one: _one,
                two: _two,
                client01,
                client02: _client02,
                discovery,
                dir: _dir,
            } = mesh;
            let restart_config = {
                let mut config = causeway_discovery::testing::config("cluster01", "network1");
                config.xds_address = discovery.xds_address;
                config.secure_xds_address = discovery.secure_xds_address;
                config.monitoring_address = discovery.monitoring_address;
                config
            };
            let mut discovery = Some(discovery);
            while let Some(command) = incoming.recv().await {
                match command {
                    Command::Apply {
                        yaml,
                        namespace,
                        done,
                    } => {
                        apply(&client01, &namespace, &yaml).await;
                        let _ = done.send(());
                    }
                    Command::StopDiscovery { done } => {
                        if let Some(running) = discovery.take() {
                            running.shutdown().await;
                        }
                        let _ = done.send(());
                    }
                    Command::StartDiscovery { done } => {
                        let started = causeway_discovery::Discovery::start(
                            restart_config.clone(),
                            client01.clone(),
                        )
                        .await
                        .expect("discovery starts again on its ports");
                        discovery = Some(started);
                        let _ = done.send(());
                    }
                }
            }
            if let Some(running) = discovery {
                running.shutdown().await;
            }
        });
    });
    let (secure_port, roots_pem, tokens, valid, expiring) = started
        .recv_timeout(WAIT)
        .expect("the control plane starts in its namespace");
    // X.509 times have whole seconds: two more make sure.
    let expired_after = Instant::now() + Duration::from_secs(2);
    ControlPlane {
        secure_port,
        roots_pem,
        tokens,
        valid,
        expiring,
        expired_after,
        commands: Some(commands),
        thread: Some(thread),
    }
}

/// The seeds' `meshConfig.accessLogFormat` (JSON), from their IstioOperator file.
fn seed_access_log_format() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/samples/topologies/multi-primary-multi-network/cluster01.yaml");
    let operator: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    operator["spec"]["meshConfig"]["accessLogFormat"]
        .as_str()
        .expect("the seed sets accessLogFormat")
        .to_owned()
}

/// The JSON access log lines of a proxy's stdout.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

async fn apply(client: &kube::Client, namespace: &str, text: &str) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    for document in text.split("\n---") {
        let object: DynamicObject = serde_saphyr::from_str(document).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        kube::Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
            .create(&PostParams::default(), &object)
            .await
            .expect("the object is created");
    }
}

/// A pod: its namespace (linked to `router` with `<ip>/24`, the router on `.1`), its files,
/// and the processes started in it, killed when the namespace goes.
struct Pod {
    name: &'static str,
    ip: String,
    namespace: Namespace,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Clone, Copy)]
struct Site {
    cluster: &'static str,
    network: &'static str,
}

const CLUSTER01: Site = Site {
    cluster: "cluster01",
    network: "network1",
};
const CLUSTER02: Site = Site {
    cluster: "cluster02",
    network: "network2",
};

fn gateway_of(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "1";
    octets.join(".")
}

impl Pod {
    fn create(name: &'static str, ip: &str, router: &Namespace, dir: &Path, index: usize) -> Pod {
        let namespace = Namespace::create(&format!("pod-{name}")).expect("a pod namespace");
        let gateway = gateway_of(ip);
        namespace
            .link(
                "eth0",
                &format!("{ip}/24"),
                router,
                &format!("veth{index}"),
                &format!("{gateway}/24"),
            )
            .expect("the pod is linked to its network");
        namespace
            .route("default", &gateway)
            .expect("a default route");
        namespace
            .set_resolv_conf(
                "nameserver 10.96.0.10\nsearch sample.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
            )
            .expect("the pod's resolv.conf");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Pod {
            name,
            ip: ip.to_owned(),
            namespace,
            dir,
            children: Vec::new(),
        }
    }

    /// istio-init, then the sidecar, with the injector's environment. `control_ip`: the
    /// control plane's address as this pod reaches it.
    fn inject(
        &mut self,
        control: &ControlPlane,
        control_ip: &str,
        site: Site,
        account: &str,
        labels: &str,
    ) {
        self.inject_with(control, control_ip, site, account, labels, &[]);
    }

    /// [`Pod::inject`] with more sidecar flags.
    fn inject_with(
        &mut self,
        control: &ControlPlane,
        control_ip: &str,
        site: Site,
        account: &str,
        labels: &str,
        extra: &[&str],
    ) {
        let init = self
            .namespace
            .command(CAUSEWAY)
            .args(["proxy", "init", "--capture-dns"])
            .output()
            .expect("causeway proxy init runs");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        std::fs::write(self.dir.join("root-cert.pem"), &control.roots_pem).unwrap();
        std::fs::write(
            self.dir.join("istio-token"),
            control.token(site.cluster, account),
        )
        .unwrap();
        let stdout = std::fs::File::create(self.dir.join("sidecar.stdout")).unwrap();
        let stderr = std::fs::File::create(self.dir.join("sidecar.stderr")).unwrap();
        let sidecar = self
            .namespace
            .command(CAUSEWAY)
            .args(["proxy", "sidecar", "--concurrency", "1"])
            .arg("--discovery-address")
            .arg(format!("{control_ip}:{}", control.secure_port))
            .args(["--discovery-server-name", "istiod.istio-system.svc"])
            .arg("--root-cert")
            .arg(self.dir.join("root-cert.pem"))
            .arg("--token-path")
            .arg(self.dir.join("istio-token"))
            .args(["--labels-file", "/nonexistent"])
            .args(extra)
            .env("POD_NAME", self.name)
            .env("POD_NAMESPACE", "sample")
            .env("INSTANCE_IP", &self.ip)
            .env("SERVICE_ACCOUNT", account)
            .env("ISTIO_META_CLUSTER_ID", site.cluster)
            .env("ISTIO_META_NETWORK", site.network)
            .env("ISTIO_META_DNS_CAPTURE", "true")
            .env("ISTIO_METAJSON_LABELS", labels)
            .env("ACCESS_LOG_FILE", "/dev/stdout")
            .env("ACCESS_LOG_FORMAT", seed_access_log_format())
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("the sidecar starts");
        self.children.push(sidecar);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let code = self
                .namespace
                .run(
                    "curl",
                    &[
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "http://127.0.0.1:15021/healthz/ready",
                    ],
                )
                .unwrap_or_default();
            if code == "200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar of {} is not ready ({code}); its log:\n{}",
                self.name,
                self.log("sidecar.stderr")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// helloworld's answer on 5000, as the sample's image gives it.
    fn run_helloworld(&mut self, version: &str) {
        let program = format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   protocol_version = 'HTTP/1.1'\n\
             \x20   def do_GET(self):\n\
             \x20       body = b'Hello version: {version}, instance: {}\\n'\n\
             \x20       self.send_response(200)\n\
             \x20       self.send_header('Content-Length', str(len(body)))\n\
             \x20       self.end_headers()\n\
             \x20       self.wfile.write(body)\n\
             \x20   def log_message(self, *args):\n\
             \x20       pass\n\
             http.server.ThreadingHTTPServer(('0.0.0.0', 5000), H).serve_forever()\n",
            self.name
        );
        let child = self
            .namespace
            .command("python3")
            .args(["-c", &program])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs helloworld");
        self.children.push(child);
    }

    /// `curl` inside the pod: the body, or the error.
    fn curl(&self, url: &str) -> Result<String, String> {
        let output = self
            .namespace
            .command("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

fn eventually_curl(pod: &Pod, url: &str, wanted: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = pod.curl(url);
        if let Ok(body) = &result
            && body.contains(wanted)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{url} from {} never answered `{wanted}`: {result:?}\nsidecar log:\n{}",
            pod.name,
            pod.log("sidecar.stderr")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_plain_curl_reaches_helloworld_by_name_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let control = Namespace::create("control").unwrap();
    let network1 = Namespace::create("network1").unwrap();
    network1.enable_forwarding().unwrap();
    control
        .link(
            "eth0",
            &format!("{CONTROL_IP}/24"),
            &network1,
            "veth0",
            "10.0.1.2/24",
        )
        .unwrap();
    control.route("10.10.0.0/16", "10.0.1.2").unwrap();

    let plane = start_control_plane(
        &control,
        MeshOptions {
            discovery_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            v1_ip: "10.10.5.2",
            ..MeshOptions::default()
        },
        &[],
    );
    let mut helloworld = Pod::create("helloworld-v1", "10.10.5.2", &network1, dir.path(), 1);
    helloworld.run_helloworld("v1");
    helloworld.inject(
        &plane,
        CONTROL_IP,
        CLUSTER01,
        "helloworld",
        r#"{"app":"helloworld","version":"v1"}"#,
    );
    let mut sleep = Pod::create("sleep", "10.10.9.2", &network1, dir.path(), 2);
    sleep.inject(&plane, CONTROL_IP, CLUSTER01, "sleep", r#"{"app":"sleep"}"#);

    let body = eventually_curl(
        &sleep,
        "http://helloworld.sample:5000/hello",
        "Hello version: v1",
    );
    assert_eq!(body, "Hello version: v1, instance: helloworld-v1\n");

    // The client's sidecar sent it to the service's cluster; the server's received it over mTLS
    // with the SNI the client set. Both logged the request in the seeds' JSON format, with the
    // request ID the client's sidecar made.
    let client_log = sleep.log("sidecar.stdout");
    let server_log = helloworld.log("sidecar.stdout");
    let client_lines = json_lines(&client_log);
    let request = client_lines
        .iter()
        .find(|line| line["response_code"] == "200")
        .unwrap_or_else(|| panic!("{client_log}"));
    assert_eq!(request["method"], "GET");
    assert_eq!(request["path"], "/hello");
    assert_eq!(request["authority"], "helloworld.sample:5000");
    assert_eq!(request["protocol"], "HTTP/1.1");
    assert_eq!(
        request["upstream_cluster"],
        "outbound|5000||helloworld.sample.svc.cluster.local"
    );
    assert_eq!(request["upstream_host"], "10.10.5.2:5000");
    assert_eq!(request["bytes_sent"], "43");
    assert!(request["user_agent"].as_str().unwrap().starts_with("curl/"));
    let request_id = request["request_id"].as_str().unwrap();
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
    let served = json_lines(&server_log)
        .into_iter()
        .find(|line| line["request_id"] == request_id)
        .unwrap_or_else(|| panic!("the server's sidecar logged {request_id}: {server_log}"));
    assert_eq!(
        served["requested_server_name"],
        "outbound_.5000_._.helloworld.sample.svc.cluster.local"
    );
    assert_eq!(served["upstream_cluster"], "inbound|5000||");
    assert_eq!(
        served["downstream_remote_address"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("10.10.9.2")
    );
    let metrics = sleep
        .namespace
        .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
        .unwrap();
    let request_series = metrics
        .lines()
        .find(|line| line.starts_with("istio_requests_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    for label in [
        "reporter=\"source\"",
        "source_workload=\"sleep\"",
        "source_cluster=\"cluster01\"",
        "destination_workload=\"helloworld-v1\"",
        "destination_workload_namespace=\"sample\"",
        "destination_cluster=\"cluster01\"",
        "destination_service=\"helloworld.sample.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_code=\"200\"",
    ] {
        assert!(
            request_series.contains(label),
            "{label} in {request_series}"
        );
    }
    assert!(request_series.ends_with(" 1"), "{request_series}");

    assert!(
        !client_log.contains(CONTROL_IP),
        "the sidecar's own connections to discovery carry its mark and are not captured:\n{client_log}"
    );
    drop((sleep, helloworld));
    drop(plane);
}

/// The east-west gateway of network2, as `causeway proxy router` in its own namespace: outside
/// on network1's side (`172.18.255.2`, the LoadBalancer address), inside on network2's.
fn start_gateway(
    network1: &Namespace,
    network2: &Namespace,
    plane: &ControlPlane,
    dir: &Path,
) -> (Namespace, Child) {
    let gateway = Namespace::create("eastwest").unwrap();
    gateway
        .link(
            "ext0",
            "172.18.255.2/24",
            network1,
            "vethgw",
            "172.18.255.1/24",
        )
        .unwrap();
    gateway
        .link(
            "int0",
            "10.20.250.2/24",
            network2,
            "vethgw",
            "10.20.250.1/24",
        )
        .unwrap();
    gateway.route("10.20.0.0/16", "10.20.250.1").unwrap();
    gateway.route("10.0.2.0/24", "10.20.250.1").unwrap();
    gateway.route("10.10.0.0/16", "172.18.255.1").unwrap();
    std::fs::write(dir.join("gateway-root-cert.pem"), &plane.roots_pem).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let router = gateway
        .command(CAUSEWAY)
        .args([
            "proxy",
            "router",
            "--concurrency",
            "1",
            "--labels-file",
            "/nonexistent",
        ])
        .arg("--discovery-address")
        .arg(format!("10.0.2.1:{}", plane.secure_port))
        .args(["--discovery-server-name", "istiod.istio-system.svc"])
        .arg("--root-cert")
        .arg(dir.join("gateway-root-cert.pem"))
        .env("POD_NAME", "istio-eastwestgateway-7f9c8b6d5-k2x4p")
        .env("POD_NAMESPACE", "istio-system")
        .env("INSTANCE_IP", "10.20.250.2")
        .env("SERVICE_ACCOUNT", "istio-eastwestgateway-service-account")
        .env("ISTIO_META_CLUSTER_ID", "cluster02")
        .env("ISTIO_META_NETWORK", "network2")
        .env("ISTIO_META_ROUTER_MODE", "sni-dnat")
        .env("ISTIO_META_REQUESTED_NETWORK_VIEW", "network2")
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"istio":"eastwestgateway","topology.istio.io/network":"network2"}"#,
        )
        .env("ACCESS_LOG_FILE", "/dev/stdout")
        .stdout(log("router.stdout"))
        .stderr(log("router.stderr"))
        .spawn()
        .expect("the router starts");
    let deadline = Instant::now() + WAIT;
    loop {
        let listening = gateway
            .run("sh", &["-c", "ss -ltn | grep -c ':15443 ' || true"])
            .unwrap_or_default();
        if listening.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never listened on 15443:\n{}",
            std::fs::read_to_string(dir.join("router.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (gateway, router)
}

/// Two networks with no route between their pod subnets: helloworld v1 and sleep on network1
/// (cluster01), helloworld v2 on network2 (cluster02) behind its east-west gateway, whose
/// address (172.18.255.2) network1 reaches. Discovery is in its own namespace, linked to both.
struct TwoNetworks {
    // Dropped in this order: processes first, then namespaces, then the control plane.
    router: Child,
    sleep: Pod,
    v1: Pod,
    v2: Pod,
    gateway: Namespace,
    network1: Namespace,
    _network2: Namespace,
    _control: Namespace,
    plane: ControlPlane,
    dir: tempfile::TempDir,
}

impl Drop for TwoNetworks {
    fn drop(&mut self) {
        let _ = self.router.kill();
        let _ = self.router.wait();
    }
}

impl TwoNetworks {
    fn start() -> TwoNetworks {
        let dir = tempfile::tempdir().unwrap();
        let control = Namespace::create("control").unwrap();
        let network1 = Namespace::create("network1").unwrap();
        let network2 = Namespace::create("network2").unwrap();
        network1.enable_forwarding().unwrap();
        network2.enable_forwarding().unwrap();
        control
            .link(
                "eth0",
                &format!("{CONTROL_IP}/24"),
                &network1,
                "veth0",
                "10.0.1.2/24",
            )
            .unwrap();
        control
            .link("eth1", "10.0.2.1/24", &network2, "veth0", "10.0.2.2/24")
            .unwrap();
        control.route("10.10.0.0/16", "10.0.1.2").unwrap();
        control.route("10.20.0.0/16", "10.0.2.2").unwrap();
        let plane = start_control_plane(
            &control,
            MeshOptions {
                gateway: true,
                discovery_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                v1_ip: "10.10.5.2",
                v2_ip: "10.20.5.2",
                gateway_ip: "172.18.255.2",
                ..MeshOptions::default()
            },
            &["expose-services.yaml"],
        );
        let (gateway, router) = start_gateway(&network1, &network2, &plane, dir.path());
        let mut v1 = Pod::create("helloworld-v1", "10.10.5.2", &network1, dir.path(), 1);
        v1.run_helloworld("v1");
        v1.inject(
            &plane,
            CONTROL_IP,
            CLUSTER01,
            "helloworld",
            r#"{"app":"helloworld","version":"v1"}"#,
        );
        let mut v2 = Pod::create("helloworld-v2", "10.20.5.2", &network2, dir.path(), 1);
        v2.run_helloworld("v2");
        v2.inject(
            &plane,
            "10.0.2.1",
            CLUSTER02,
            "helloworld",
            r#"{"app":"helloworld","version":"v2"}"#,
        );
        let mut sleep = Pod::create("sleep", "10.10.9.2", &network1, dir.path(), 2);
        sleep.inject(&plane, CONTROL_IP, CLUSTER01, "sleep", r#"{"app":"sleep"}"#);
        TwoNetworks {
            router,
            sleep,
            v1,
            v2,
            gateway,
            network1,
            _network2: network2,
            _control: control,
            plane,
            dir,
        }
    }

    fn router_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("router.stdout")).unwrap_or_default()
    }

    /// A file in the test's directory, written with `text`; its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// `openssl s_client` from network1 (outside the mesh, no capture): its whole output. With
    /// `request`, it sends `GET /hello` once connected.
    fn s_client(
        &self,
        connect: &str,
        server_name: &str,
        pair: Option<(&str, &str)>,
        request: bool,
    ) -> String {
        let roots = self.file("roots.pem", &self.plane.roots_pem);
        let mut command = format!(
            "timeout 10 openssl s_client -connect {connect} -servername {server_name} -CAfile {roots}"
        );
        if let Some((cert, key)) = pair {
            command.push_str(&format!(" -cert {cert} -key {key}"));
        }
        if request {
            command = format!(
                "(printf 'GET /hello HTTP/1.1\\r\\nHost: helloworld\\r\\nConnection: close\\r\\n\\r\\n') | {command} -ign_eof 2>&1"
            );
        } else {
            command.push_str(" </dev/null 2>&1");
        }
        let output = self
            .network1
            .command("sh")
            .args(["-c", &command])
            .output()
            .expect("openssl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

#[test]
fn another_network_is_reached_only_through_its_east_west_gateway() {
    let mesh = TwoNetworks::start();
    let (sleep, v2) = (&mesh.sleep, &mesh.v2);

    // The networks are isolated: network1 has no route to network2's pods.
    let direct = mesh
        .network1
        .command("curl")
        .args(["-sS", "--max-time", "2", "http://10.20.5.2:5000/hello"])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "network1 must not reach 10.20.5.2 directly"
    );

    eventually_curl(
        sleep,
        "http://helloworld.sample:5000/hello",
        "Hello version: v2",
    );
    let mut versions = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let body = sleep
            .curl("http://helloworld.sample:5000/hello")
            .expect("an answer");
        let version = body.split(',').next().unwrap_or_default().to_owned();
        *versions.entry(version).or_insert(0) += 1;
    }
    assert_eq!(
        versions.keys().cloned().collect::<Vec<_>>(),
        ["Hello version: v1", "Hello version: v2"],
        "round robin over both clusters: {versions:?}"
    );

    // v2 was reached through the gateway, with the service's SNI, and only through it.
    let router_log = mesh.router_log();
    assert!(
        router_log.contains("outbound_.5000_._.helloworld.sample.svc.cluster.local")
            && router_log.contains("10.20.5.2:5000"),
        "{router_log}"
    );
    let v2_log = v2.log("sidecar.stdout");
    let inbound: Vec<serde_json::Value> = json_lines(&v2_log)
        .into_iter()
        .filter(|line| line["upstream_cluster"] == "inbound|5000||")
        .collect();
    assert!(!inbound.is_empty(), "{v2_log}");
    for line in &inbound {
        let client = line["downstream_remote_address"].as_str().unwrap();
        assert!(
            client.starts_with("10.20.250.2:"),
            "v2 is reached from the gateway only: {line}"
        );
    }
}

const SNI: &str = "outbound_.5000_._.helloworld.sample.svc.cluster.local";

/// The SPIFFE IDs in the subjectAltName of the server certificate `s_client` printed.
fn server_identity(s_client_output: &str) -> String {
    let start = s_client_output.find("-----BEGIN CERTIFICATE-----");
    let end = s_client_output.find("-----END CERTIFICATE-----");
    let (Some(start), Some(end)) = (start, end) else {
        return String::new();
    };
    let pem = &s_client_output[start..end + "-----END CERTIFICATE-----".len()];
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

#[test]
fn the_gateway_and_strict_workloads_let_in_only_what_the_mesh_trusts() {
    let mesh = TwoNetworks::start();
    let cert = mesh.file("sleep.pem", &mesh.plane.valid.cert);
    let key = mesh.file("sleep-key.pem", &mesh.plane.valid.key);

    // openssl with a workload certificate, through the gateway, to helloworld v2's sidecar.
    let output = mesh.s_client("172.18.255.2:15443", SNI, Some((&cert, &key)), false);
    assert!(output.contains("Verify return code: 0 (ok)"), "{output}");
    let identity = server_identity(&output);
    assert!(
        identity.contains("URI:spiffe://cluster.local/ns/sample/sa/helloworld"),
        "{identity}\n{output}"
    );
    assert!(mesh.router_log().contains(SNI));

    // An SNI the gateway does not expose: closed before any handshake, and counted.
    let output = mesh.s_client(
        "172.18.255.2:15443",
        "outbound_.9999_._.nothing.sample.svc.cluster.local",
        Some((&cert, &key)),
        false,
    );
    assert!(!output.contains("BEGIN CERTIFICATE"), "{output}");
    let metrics = mesh
        .gateway
        .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
        .unwrap();
    assert!(
        metrics.contains(
            "causeway_proxy_refused_connections_total{listener=\"router\",reason=\"unknown_sni\"} 1"
        ),
        "{metrics}"
    );

    // A certificate from another root, and an expired one: v1's sidecar refuses both.
    let foreign = tempfile::tempdir().unwrap();
    let profile = causeway_ca::authority::self_signed_root_profile("cluster.local");
    let (other_ca, _) = causeway_ca::CertificateAuthority::load_or_create_self_signed(
        foreign.path(),
        &profile,
        causeway_ca::SigningPolicy::default(),
    )
    .unwrap();
    let identity = causeway_ca::SpiffeId::new("cluster.local", "sample", "sleep").unwrap();
    let other_key = causeway_ca::WorkloadKey::generate().unwrap();
    let signed = other_ca
        .sign_csr(
            other_key.csr_pem(&identity).unwrap().as_bytes(),
            &identity,
            None,
        )
        .unwrap();
    let other_cert = mesh.file("other.pem", &signed.cert_chain.concat());
    let other_key = mesh.file("other-key.pem", &other_key.private_key_pem());
    // The mesh's own certificate gets through, straight to v1's sidecar.
    let output = mesh.s_client("10.10.5.2:5000", SNI, Some((&cert, &key)), true);
    assert!(output.contains("Hello version: v1"), "{output}");
    let output = mesh.s_client("10.10.5.2:5000", SNI, Some((&other_cert, &other_key)), true);
    assert!(!output.contains("Hello version"), "{output}");
    let expired_cert = mesh.file("expired.pem", &mesh.plane.expiring.cert);
    let expired_key = mesh.file("expired-key.pem", &mesh.plane.expiring.key);
    if let Some(wait) = mesh
        .plane
        .expired_after
        .checked_duration_since(Instant::now())
    {
        std::thread::sleep(wait);
    }
    let output = mesh.s_client(
        "10.10.5.2:5000",
        SNI,
        Some((&expired_cert, &expired_key)),
        true,
    );
    assert!(!output.contains("Hello version"), "{output}");
    // With TLS 1.3 the client finishes first; the server's verdict follows within moments.
    let refused = "causeway_proxy_refused_connections_total{listener=\"inbound\",reason=\"handshake_failed\"} 2";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v1_metrics = mesh
            .v1
            .namespace
            .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
            .unwrap();
        if v1_metrics.contains(refused) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{v1_metrics}\n{}",
            mesh.v1.log("sidecar.stderr")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v1_log = mesh.v1.log("sidecar.stderr");
    assert!(v1_log.contains("certificate expired"), "{v1_log}");

    // PERMISSIVE (Istio's default) lets a client without a sidecar in; STRICT does not, while
    // mesh clients keep working.
    let plain = || {
        mesh.network1
            .command("curl")
            .args(["-sS", "--max-time", "3", "http://10.10.5.2:5000/hello"])
            .output()
            .unwrap()
    };
    assert!(plain().status.success(), "PERMISSIVE accepts plaintext");
    mesh.plane.apply(
        "sample",
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls:\n    mode: STRICT\n",
    );
    let deadline = Instant::now() + WAIT;
    while plain().status.success() {
        assert!(
            Instant::now() < deadline,
            "STRICT never reached v1's sidecar"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eventually_curl(
        &mesh.sleep,
        "http://helloworld.sample:5000/hello",
        "Hello version: v1",
    );
    let v1_metrics = mesh
        .v1
        .namespace
        .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
        .unwrap();
    assert!(
        v1_metrics.contains("reason=\"plaintext_on_strict\""),
        "{v1_metrics}"
    );
}

/// One network: discovery, helloworld v1 and sleep, each sidecar with `extra` flags.
struct OneNetwork {
    sleep: Pod,
    v1: Pod,
    _network1: Namespace,
    _control: Namespace,
    plane: ControlPlane,
    _dir: tempfile::TempDir,
}

impl OneNetwork {
    fn start(extra: &[&str]) -> OneNetwork {
        let dir = tempfile::tempdir().unwrap();
        let control = Namespace::create("control").unwrap();
        let network1 = Namespace::create("network1").unwrap();
        network1.enable_forwarding().unwrap();
        control
            .link(
                "eth0",
                &format!("{CONTROL_IP}/24"),
                &network1,
                "veth0",
                "10.0.1.2/24",
            )
            .unwrap();
        control.route("10.10.0.0/16", "10.0.1.2").unwrap();
        let plane = start_control_plane(
            &control,
            MeshOptions {
                discovery_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                v1_ip: "10.10.5.2",
                ..MeshOptions::default()
            },
            &[],
        );
        let mut v1 = Pod::create("helloworld-v1", "10.10.5.2", &network1, dir.path(), 1);
        v1.run_helloworld("v1");
        v1.inject_with(
            &plane,
            CONTROL_IP,
            CLUSTER01,
            "helloworld",
            r#"{"app":"helloworld","version":"v1"}"#,
            extra,
        );
        let mut sleep = Pod::create("sleep", "10.10.9.2", &network1, dir.path(), 2);
        sleep.inject_with(
            &plane,
            CONTROL_IP,
            CLUSTER01,
            "sleep",
            r#"{"app":"sleep"}"#,
            extra,
        );
        OneNetwork {
            sleep,
            v1,
            _network1: network1,
            _control: control,
            plane,
            _dir: dir,
        }
    }
}

fn config_dump(pod: &Pod) -> serde_json::Value {
    let text = pod
        .namespace
        .run("curl", &["-s", "http://127.0.0.1:15000/config_dump"])
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn sidecars_keep_routing_while_discovery_is_away_and_catch_up_when_it_returns() {
    // State of the world this time: both protocols must survive an outage.
    let mesh = OneNetwork::start(&["--xds-protocol", "sotw"]);
    eventually_curl(
        &mesh.sleep,
        "http://helloworld.sample:5000/hello",
        "Hello version: v1",
    );
    mesh.plane.stop_discovery();
    let deadline = Instant::now() + WAIT;
    while config_dump(&mesh.sleep)["xds"]["connected"] == true {
        assert!(
            Instant::now() < deadline,
            "the sidecar never noticed discovery left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it is away a Service appears; no proxy can know it yet.
    mesh.plane.apply(
        "sample",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hello2\nspec:\n  selector:\n    app: helloworld\n  ports:\n  - name: http\n    port: 5000\n",
    );
    let away = Instant::now();
    let mut served = 0;
    while away.elapsed() < Duration::from_secs(60) {
        let body = mesh
            .sleep
            .curl("http://helloworld.sample:5000/hello")
            .unwrap_or_else(|e| {
                panic!(
                    "request {served} failed after {:?} without discovery: {e}",
                    away.elapsed()
                )
            });
        assert!(body.starts_with("Hello version: v1"), "{body}");
        served += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(served >= 25, "{served} requests in 60 s");
    assert!(mesh.sleep.curl("http://hello2.sample:5000/hello").is_err());
    mesh.plane.start_discovery();
    eventually_curl(
        &mesh.sleep,
        "http://hello2.sample:5000/hello",
        "Hello version: v1",
    );
    assert_eq!(config_dump(&mesh.sleep)["xds"]["connected"], true);
}

#[test]
fn certificates_rotate_under_continuous_traffic_without_losing_a_request() {
    // Four-second certificates: renewed every two seconds on both sides.
    let mesh = OneNetwork::start(&["--cert-ttl", "4s"]);
    eventually_curl(
        &mesh.sleep,
        "http://helloworld.sample:5000/hello",
        "Hello version: v1",
    );
    let serial = |pod: &Pod| {
        config_dump(pod)["certificates"]["certificates"][0]["serial_number"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = (serial(&mesh.sleep), serial(&mesh.v1));
    // One connection kept open across every rotation, and a new connection per request beside it.
    let keep_alive = mesh
        .sleep
        .namespace
        .command("python3")
        .args([
            "-c",
            "import http.client,time\n\
             c=http.client.HTTPConnection('helloworld.sample',5000,timeout=5)\n\
             n=0\n\
             end=time.time()+10\n\
             while time.time()<end:\n\
             \x20   c.request('GET','/hello'); r=r=c.getresponse(); b=r.read()\n\
             \x20   assert r.status==200 and b.startswith(b'Hello version: v1'), (r.status,b)\n\
             \x20   n+=1; time.sleep(0.05)\n\
             print(n)\n",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let body = mesh
            .sleep
            .curl("http://helloworld.sample:5000/hello")
            .unwrap_or_else(|e| panic!("request {requests} failed during rotation: {e}"));
        assert!(body.starts_with("Hello version: v1"), "{body}");
        requests += 1;
    }
    let kept = keep_alive.wait_with_output().unwrap();
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    let kept_requests: u32 = String::from_utf8_lossy(&kept.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        kept_requests > 50,
        "{kept_requests} requests on the long-lived connection"
    );
    assert!(requests > 20, "{requests} new-connection requests");
    let rotated = (serial(&mesh.sleep), serial(&mesh.v1));
    assert_ne!(first.0, rotated.0, "sleep's certificate was renewed");
    assert_ne!(first.1, rotated.1, "helloworld's certificate was renewed");
    let renewals = mesh
        .sleep
        .log("sidecar.stderr")
        .matches("workload certificate obtained")
        .count();
    assert!(
        renewals >= 4,
        "{renewals} certificates in 10 s with a 4 s lifetime"
    );
}
