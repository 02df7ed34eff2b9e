//! The capture rules in a real network namespace (root, as in CI), judged by real sockets: a
//! Python listener on the proxy's ports reads the original destination (`SO_ORIGINAL_DST`) of
//! what it was handed.

use causeway_lab::netns::Namespace;
use causeway_proxy::capture::{CaptureConfig, InboundPorts};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// A process killed when dropped (its namespace's drop would kill it too; this also reaps it).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Listeners on `ports` inside `namespace`; each answers `<its port> <original destination>`
/// (the address it was reached on, when the connection was not redirected).
fn listeners(namespace: &Namespace, ports: &[u16]) -> Running {
    let program = format!(
        r#"
import socket, struct, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16); ready.release()
    while True:
        c, _ = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            dport, = struct.unpack("!H", raw[2:4])
            original = f"{{socket.inet_ntoa(raw[4:8])}}:{{dport}}"
        except OSError:
            # Not redirected (no NAT on this connection): where it arrived is where it went.
            address, dport = c.getsockname()
            original = f"{{address}}:{{dport}}"
        c.sendall(f"{{port}} {{original}}".encode()); c.close()
ports = {ports:?}
ready = threading.Semaphore(0)
for p in ports: threading.Thread(target=serve, args=(p,), daemon=True).start()
for p in ports: ready.acquire()
print("ready", flush=True)
threading.Event().wait()
"#
    );
    let mut child = namespace
        .command("python3")
        .args(["-c", &program])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    Running(child)
}

/// What a connection from `namespace` to `address:port` reads (with socket mark `mark`), or
/// `error: ...`.
fn fetch(namespace: &Namespace, address: &str, port: u16, mark: Option<u32>) -> String {
    let set_mark = mark
        .map(|mark| format!("c.setsockopt(socket.SOL_SOCKET, 36, {mark})"))
        .unwrap_or_default();
    let program = format!(
        "import socket\n\
         c=socket.socket(); c.settimeout(1)\n\
         {set_mark}\n\
         try:\n    c.connect(('{address}', {port})); print(c.recv(100).decode())\n\
         except OSError as e:\n    print('error:', e)\n"
    );
    namespace
        .run("python3", &["-c", &program])
        .unwrap()
        .trim()
        .to_owned()
}

/// A pod namespace with capture applied, linked to a peer namespace: the pod at 10.254.0.2, the
/// peer at 10.254.0.1, and the pod's default route through the peer.
fn pod_and_peer(config: &CaptureConfig) -> (Namespace, Namespace) {
    let pod = Namespace::create("pod").unwrap();
    let peer = Namespace::create("peer").unwrap();
    pod.link("eth0", "10.254.0.2/24", &peer, "eth0", "10.254.0.1/24")
        .unwrap();
    pod.route("default", "10.254.0.1").unwrap();
    restore(&pod, config);
    (pod, peer)
}

/// Replaces `namespace`'s nat table with `config`'s rules, as `causeway proxy init` does there.
fn restore(namespace: &Namespace, config: &CaptureConfig) {
    use std::io::Write;
    let rules = config.rules().unwrap();
    let applied = namespace
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(rules.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(applied.success(), "iptables-restore refused:\n{rules}");
}

#[test]
fn outbound_connections_reach_the_proxy_with_their_original_destination_unless_marked() {
    let (pod, peer) = pod_and_peer(&CaptureConfig::default());
    let _proxy = listeners(&pod, &[15001]);
    let _upstream = listeners(&peer, &[5000]);

    // A service VIP no one holds: captured, and the proxy learns where it was going.
    assert_eq!(
        fetch(&pod, "10.96.0.10", 5000, None),
        "15001 10.96.0.10:5000"
    );
    // The proxy's own connection (marked) goes where it was sent: to the peer's listener, which
    // sees no redirect.
    assert_eq!(
        fetch(&pod, "10.254.0.1", 5000, Some(1337)),
        "5000 10.254.0.1:5000"
    );
    // Traffic to the pod itself is not captured outbound.
    let _local = listeners(&pod, &[7000]);
    assert_eq!(fetch(&pod, "127.0.0.1", 7000, None), "7000 127.0.0.1:7000");
}

#[test]
fn inbound_connections_reach_the_proxy_except_on_excluded_ports() {
    let (pod, peer) = pod_and_peer(&CaptureConfig {
        inbound_ports: InboundPorts::All,
        ..CaptureConfig::default()
    });
    let _pod_side = listeners(&pod, &[15006, 15021]);

    assert_eq!(
        fetch(&peer, "10.254.0.2", 5000, None),
        "15006 10.254.0.2:5000"
    );
    // Health (15021) is Istio's default exclusion: it is reached directly.
    assert_eq!(
        fetch(&peer, "10.254.0.2", 15021, None),
        "15021 10.254.0.2:15021"
    );
}

#[test]
fn applying_twice_gives_the_same_table() {
    let config = CaptureConfig {
        capture_dns: true,
        ..CaptureConfig::default()
    };
    let (pod, _peer) = pod_and_peer(&config);
    let first = pod.run("iptables-save", &["-t", "nat"]).unwrap();
    restore(&pod, &config);
    let second = pod.run("iptables-save", &["-t", "nat"]).unwrap();
    let rules_only = |saved: &str| -> Vec<String> {
        saved
            .lines()
            .filter(|line| line.starts_with("-A"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(rules_only(&first), rules_only(&second));
    assert!(
        rules_only(&first)
            .iter()
            .any(|rule| rule.contains("--dport 53") && rule.contains("udp")),
        "{first}"
    );
}

/// The sidecar's passthrough, in-process inside the pod's namespace: a captured connection to a
/// destination reaches it (the peer's listener sees no redirect), and the answer comes back.
/// Without the upstream's socket mark, its connection would be captured again and loop.
#[test]
fn captured_connections_pass_through_to_their_original_destination() {
    let (pod, peer) = pod_and_peer(&CaptureConfig::default());
    let _upstream = listeners(&peer, &[5000]);
    let (bound, bound_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = pod.spawn_inside(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("0.0.0.0:15001")
                .await
                .unwrap();
            bound.send(()).unwrap();
            tokio::select! {
                served = causeway_proxy::passthrough::serve(listener, 1337) => served.unwrap(),
                _ = stopped => {}
            }
        })
    });
    bound_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the passthrough listens inside the pod");

    for _ in 0..3 {
        assert_eq!(
            fetch(&pod, "10.254.0.1", 5000, None),
            "5000 10.254.0.1:5000"
        );
    }
    // Nothing listens there: the application sees the failure as it would without a sidecar
    // (its connection is accepted by the proxy, then closed without data).
    assert_eq!(fetch(&pod, "10.254.0.1", 5999, None), "");

    stop.send(()).unwrap();
    proxy
        .join()
        .unwrap()
        .expect("the thread entered the pod's namespace");
}
