//! The seeds' promise, end to end, in network namespaces built here: a plain
//! `curl http://helloworld.sample:5000/hello` in a pod with a sidecar (DNS and capture, no proxy
//! settings in curl) gets helloworld's answer over mutual TLS. Discovery and the lab API servers
//! run in a control-plane namespace; every proxy is a real `causeway proxy sidecar` process.
//! Needs root (CI is root).

mod fixtures;

use fixtures::dataplane::*;

#[test]
fn a_plain_curl_reaches_helloworld_by_name_over_mutual_tls() {
    let mesh = OneNetwork::start(&[]);
    let (sleep, helloworld) = (&mesh.sleep, &mesh.v1);
    let body = eventually_curl(
        sleep,
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
    let service_time = request["upstream_service_time"].as_str().unwrap();
    assert!(
        service_time.parse::<u64>().is_ok(),
        "as Envoy's router sets it: {service_time}"
    );
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
    // As Istio's inbound clusters do, the application is reached from 127.0.0.6.
    assert!(
        served["upstream_local_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.6:"),
        "{served}"
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
    // The server's sidecar knows the client's workload from the metadata exchange (its
    // certificate only says namespace and service account).
    let served_metrics = helloworld
        .namespace
        .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
        .unwrap();
    let served_series = served_metrics
        .lines()
        .find(|line| line.starts_with("istio_requests_total{reporter=\"destination\""))
        .unwrap_or_else(|| panic!("{served_metrics}"));
    for label in [
        "source_workload=\"sleep\"",
        "source_workload_namespace=\"sample\"",
        "source_app=\"sleep\"",
        "source_cluster=\"cluster01\"",
        "source_principal=\"spiffe://cluster.local/ns/sample/sa/sleep\"",
        "destination_workload=\"helloworld-v1\"",
        "destination_service=\"helloworld.sample.svc.cluster.local\"",
        "destination_service_name=\"helloworld\"",
    ] {
        assert!(served_series.contains(label), "{label} in {served_series}");
    }

    // The application learns who called from `x-forwarded-client-cert`, as Istio's inbound
    // sidecar sets it; sleep cannot forge one.
    let forwarded = sleep
        .namespace
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            "x-forwarded-client-cert: By=forged",
        ])
        .arg("http://helloworld.sample:5000/xfcc")
        .output()
        .unwrap();
    let forwarded = String::from_utf8_lossy(&forwarded.stdout).into_owned();
    let (by_and_hash, rest) = forwarded
        .split_once(";Subject=")
        .unwrap_or_else(|| panic!("{forwarded}"));
    let hash = by_and_hash
        .strip_prefix("By=spiffe://cluster.local/ns/sample/sa/helloworld;Hash=")
        .unwrap_or_else(|| panic!("{forwarded}"));
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{forwarded}"
    );
    assert_eq!(rest, "\"\";URI=spiffe://cluster.local/ns/sample/sa/sleep");

    // Uploads through both sidecars as curl sends them: after the server's `100 Continue`
    // (passed back to curl, which would otherwise wait out its timeout), and chunked. The server
    // counts every byte; both sidecars' logs count the body.
    let upload = sleep.dir.join("upload.bin");
    std::fs::write(&upload, vec![b'x'; 256 * 1024]).unwrap();
    let with_expect = [
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
    ];
    let chunked = ["-H", "Transfer-Encoding: chunked"];
    for (how, options) in [("expect", &with_expect[..]), ("chunked", &chunked[..])] {
        let output = sleep
            .namespace
            .command("curl")
            .args(["-sS", "--max-time", "20", "--data-binary"])
            .arg(format!("@{}", upload.display()))
            .args(options)
            .arg("http://helloworld.sample:5000/upload")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{how}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "received 262144 bytes",
            "{how}"
        );
        if how == "expect" {
            assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
            assert!(
                !stderr.contains("x-envoy-peer-metadata"),
                "the server sidecar's metadata stops at the client's sidecar: {stderr}"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = |pod: &Pod| {
            json_lines(&pod.log("sidecar.stdout"))
                .into_iter()
                .filter(|line| line["path"] == "/upload" && line["bytes_received"] == "262144")
                .count()
        };
        if logged(sleep) == 2 && logged(helloworld) == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both uploads logged with their size on both sides:\n{}\n{}",
            sleep.log("sidecar.stdout"),
            helloworld.log("sidecar.stdout")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // One curl per request, each its own client connection: as with Envoy's connection pool,
    // they share the mTLS connection the first one opened, so the server's sidecar sees all
    // of them from one client port and the client's sidecar sends all from one local port.
    for n in 0..3 {
        let url = format!("http://helloworld.sample:5000/hello?pooled={n}");
        let body = sleep.curl(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(body.starts_with("Hello version: v1"), "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (client_ports, server_peers) = loop {
        let field_of_pooled = |pod: &Pod, field: &str| -> Vec<String> {
            json_lines(&pod.log("sidecar.stdout"))
                .into_iter()
                .filter(|line| line["path"].as_str().unwrap_or("").contains("pooled="))
                .map(|line| line[field].as_str().unwrap_or("-").to_owned())
                .collect()
        };
        let client_ports = field_of_pooled(sleep, "upstream_local_address");
        let server_peers = field_of_pooled(helloworld, "downstream_remote_address");
        if client_ports.len() == 3 && server_peers.len() == 3 {
            break (client_ports, server_peers);
        }
        assert!(
            Instant::now() < deadline,
            "three pooled requests logged on both sides:\n{}\n{}",
            sleep.log("sidecar.stdout"),
            helloworld.log("sidecar.stdout")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        client_ports.iter().all(|port| *port == client_ports[0]),
        "{client_ports:?}"
    );
    assert_eq!(
        server_peers, client_ports,
        "the same connection, seen from both ends"
    );

    assert!(
        !client_log.contains(CONTROL_IP),
        "the sidecar's own connections to discovery carry its mark and are not captured:\n{client_log}"
    );
}

/// The east-west gateway of network2, as `causeway proxy router` in its own namespace: outside
/// on network1's side (`172.18.255.2`, the LoadBalancer address), inside on network2's.
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
    network2: Namespace,
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
        let Networks {
            control,
            network1,
            network2,
        } = networks(true);
        let network2 = network2.expect("asked for");
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
            network2,
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

    // HTTP is balanced per request, as Envoy does: four requests on one keep-alive connection
    // (curl reuses it; `num_connects` counts new connections) go to both versions in turn.
    let url = "http://helloworld.sample:5000/hello";
    let keep_alive = sleep
        .namespace
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "connects=%{num_connects}\n",
        ])
        .args([url, url, url, url])
        .output()
        .unwrap();
    let answers = String::from_utf8_lossy(&keep_alive.stdout).into_owned();
    let connects: usize = answers
        .lines()
        .filter_map(|line| line.strip_prefix("connects="))
        .map(|n| n.parse::<usize>().unwrap())
        .sum();
    assert_eq!(connects, 1, "one connection for all four: {answers}");
    let order: Vec<&str> = answers
        .lines()
        .filter_map(|line| line.strip_prefix("Hello version: "))
        .map(|rest| rest.split(',').next().unwrap())
        .collect();
    assert_eq!(order.len(), 4, "{answers}");
    assert!(
        order.windows(2).all(|pair| pair[0] != pair[1]),
        "consecutive requests on one connection alternate: {order:?}"
    );

    // v2 was reached through the gateway, with the service's SNI, and only through it. The
    // router logs a connection when it ends, as Envoy's TCP proxy does, and the client's sidecar
    // keeps its connections through the gateway in its pool; a request that closes its
    // connection (`Connection: close`, passed on to the server) ends one. Round robin sends one
    // of two such requests to v2.
    for _ in 0..2 {
        let closing = sleep
            .namespace
            .command("curl")
            .args(["-sS", "--max-time", "5", "-H", "Connection: close", url])
            .output()
            .unwrap();
        assert!(closing.status.success(), "{closing:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let router_log = mesh.router_log();
        if router_log.contains("outbound_.5000_._.helloworld.sample.svc.cluster.local")
            && router_log.contains("10.20.5.2:5000")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{router_log}");
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// gRPC is balanced per request, as Envoy balances HTTP/2: four calls on one channel (one
/// HTTP/2 connection from the client) reach the local and the remote greeter in turn, the
/// remote one through the gateway; the client's sidecar keeps one connection per endpoint.
#[test]
fn grpc_calls_on_one_connection_are_balanced_per_request() {
    let mesh = TwoNetworks::start();
    let ports = [("grpc", 7070)];
    mesh.plane
        .workload("cluster01", "greeter", "10.10.6.2", &ports);
    mesh.plane
        .workload("cluster02", "greeter", "10.20.6.2", &ports);
    let mut local = Pod::create(
        "greeter-v1",
        "10.10.6.2",
        &mesh.network1,
        mesh.dir.path(),
        3,
    );
    local.run_greeter("v1");
    local.inject(
        &mesh.plane,
        CONTROL_IP,
        CLUSTER01,
        "helloworld",
        r#"{"app":"greeter","version":"v1"}"#,
    );
    let mut remote = Pod::create(
        "greeter-v2",
        "10.20.6.2",
        &mesh.network2,
        mesh.dir.path(),
        2,
    );
    remote.run_greeter("v2");
    remote.inject(
        &mesh.plane,
        "10.0.2.1",
        CLUSTER02,
        "helloworld",
        r#"{"app":"greeter","version":"v2"}"#,
    );
    local.wait_ready();
    remote.wait_ready();

    // Four calls on one channel, retried as a whole until the mesh knows both greeters.
    let client = "import grpc, sys\n\
        channel = grpc.insecure_channel('greeter.sample:7070')\n\
        say = channel.unary_unary('/hello.Greeter/Say')\n\
        try:\n    print(','.join(say(b'', timeout=5).decode() for _ in range(4)))\n\
        except grpc.RpcError as error:\n    print('error:', error.code(), error.details())\n";
    let deadline = Instant::now() + WAIT;
    let answers = loop {
        let printed = mesh
            .sleep
            .namespace
            .command("python3")
            .args(["-c", client])
            .env("GRPC_DNS_RESOLVER", "native")
            .output()
            .unwrap();
        let answers = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
        if answers.contains("v1") && answers.contains("v2") || Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let order: Vec<&str> = answers.split(',').collect();
    assert_eq!(order.len(), 4, "{answers}");
    assert!(
        order.windows(2).all(|pair| pair[0] != pair[1]),
        "consecutive calls on one connection alternate: {answers}"
    );

    // The client's sidecar logged each call as HTTP/2 with gRPC's status, all from one client
    // connection, to both endpoints: the remote one at its gateway.
    let calls: Vec<serde_json::Value> = json_lines(&mesh.sleep.log("sidecar.stdout"))
        .into_iter()
        .filter(|line| line["path"] == "/hello.Greeter/Say" && line["response_code"] == "200")
        .collect();
    let last_four = &calls[calls.len().saturating_sub(4)..];
    assert_eq!(last_four.len(), 4, "{calls:#?}");
    let client_ports: std::collections::BTreeSet<&str> = last_four
        .iter()
        .map(|line| line["downstream_remote_address"].as_str().unwrap())
        .collect();
    assert_eq!(
        client_ports.len(),
        1,
        "one client connection: {last_four:#?}"
    );
    let hosts: std::collections::BTreeSet<&str> = last_four
        .iter()
        .map(|line| line["upstream_host"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        ["10.10.6.2:7070", "172.18.255.2:15443"],
        "{last_four:#?}"
    );
    for line in last_four {
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
    }
    assert!(
        mesh.router_log()
            .contains("outbound_.7070_._.greeter.sample.svc.cluster.local"),
        "{}",
        mesh.router_log()
    );
}

/// Opaque TCP between sidecars carries Istio's TCP metadata exchange (ALPN
/// `istio-peer-exchange`): the server's TCP series name the source workload, which its
/// certificate does not say, and the application's bytes arrive untouched.
#[test]
fn tcp_connections_exchange_peer_metadata() {
    let mesh = TwoNetworks::start();
    mesh.plane
        .workload("cluster01", "echo", "10.10.6.2", &[("tcp-echo", 9000)]);
    let mut echo = Pod::create("echo", "10.10.6.2", &mesh.network1, mesh.dir.path(), 3);
    echo.run_python(
        "import socketserver\n\
         class Echo(socketserver.BaseRequestHandler):\n\
         \x20   def handle(self):\n\
         \x20       while data := self.request.recv(4096):\n\
         \x20           self.request.sendall(data)\n\
         socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
         socketserver.ThreadingTCPServer(('0.0.0.0', 9000), Echo).serve_forever()\n",
    );
    echo.inject(
        &mesh.plane,
        CONTROL_IP,
        CLUSTER01,
        "helloworld",
        r#"{"app":"echo","version":"v1"}"#,
    );
    echo.wait_ready();

    let client = "import socket\n\
        try:\n\
        \x20   s = socket.create_connection(('echo.sample', 9000), timeout=5)\n\
        \x20   s.sendall(b'ping over tcp')\n\
        \x20   print(s.recv(100).decode())\n\
        except OSError as error:\n\
        \x20   print('error:', error)\n";
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        let answer = mesh
            .sleep
            .namespace
            .run("python3", &["-c", client])
            .unwrap();
        if answer.trim() == "ping over tcp" || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        answer.trim(),
        "ping over tcp",
        "the echo got only the client's bytes"
    );

    let opened = |pod: &Pod, reporter: &str| -> String {
        let metrics = pod
            .namespace
            .run("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"])
            .unwrap();
        metrics
            .lines()
            .find(|line| {
                line.starts_with("istio_tcp_connections_opened_total{")
                    && line.contains(&format!("reporter=\"{reporter}\""))
                    && line.contains("destination_service=\"echo.sample.svc.cluster.local\"")
            })
            .unwrap_or_else(|| panic!("no {reporter} TCP series:\n{metrics}"))
            .to_owned()
    };
    let served = opened(&echo, "destination");
    for label in [
        "source_workload=\"sleep\"",
        "source_app=\"sleep\"",
        "source_cluster=\"cluster01\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(served.contains(label), "{label} in {served}");
    }
    let sent = opened(&mesh.sleep, "source");
    assert!(sent.contains("destination_workload=\"echo\""), "{sent}");
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
        let Networks {
            control, network1, ..
        } = networks(false);
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
    // The sidecar's next attempt may be a whole maximal retry delay away.
    let deadline = Instant::now() + Duration::from_secs(45);
    while config_dump(&mesh.sleep)["xds"]["connected"] != true {
        assert!(
            Instant::now() < deadline,
            "the sidecar did not reconnect within 45 s of discovery's return"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
