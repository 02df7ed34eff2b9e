//! The data plane benchmark (issue 5), in network namespaces as the end-to-end tests build them
//! (root). One echo server program everywhere; four paths to it:
//!
//! - direct: a pod without a sidecar to a pod without a sidecar;
//! - sidecar: a pod with `causeway proxy sidecar` to the echo Service's VIP, mTLS to the echo
//!   pod's sidecar;
//! - gateway: the same client to a Service that exists only on the other network: mTLS through
//!   `causeway proxy router` to that pod's sidecar;
//! - haproxy: Debian's HAProxy in TCP mode, a client-side instance and a server-side one, mTLS
//!   between them with ECDSA P-256 certificates of the mesh CA.
//!
//! Latency: 64-byte ping-pong on one connection, every process and thread on core 0; then, as
//! pinned, HTTP/1.1 requests on a new connection each (curl-style). Throughput: bulk one way,
//! unpinned. Then the sidecar's RSS idle and under 1,000 HTTP/1.1 requests/s, and its CPU per
//! 1,000 requests. Prints tables, then one line of JSON.
//!
//! `cargo bench --bench dataplane` measures; `cargo test --benches` runs it once, briefly.

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use fixtures::dataplane::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

struct Plan {
    runs: usize,
    pings: usize,
    warmup: usize,
    bulk_bytes: u64,
    load_runs: usize,
    load_seconds: u64,
    /// HTTP/1.1 requests, each on a new connection, per run and path.
    fresh_requests: usize,
}

const FULL: Plan = Plan {
    runs: 5,
    pings: 20_000,
    warmup: 2_000,
    bulk_bytes: 512 << 20,
    load_runs: 3,
    load_seconds: 8,
    fresh_requests: 1_000,
};
const SMOKE: Plan = Plan {
    runs: 1,
    pings: 200,
    warmup: 20,
    bulk_bytes: 4 << 20,
    load_runs: 1,
    load_seconds: 1,
    fresh_requests: 20,
};

const ECHO_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const HAPROXY_CLIENT_PORT: u16 = 7100;
const HAPROXY_SERVER_PORT: u16 = 7443;
/// The port the captured HAProxy pair's client side connects to; redirected to 7443 in the
/// server's namespace.
const CAPTURED_SERVER_PORT: u16 = 7001;
/// A VIP for the captured HAProxy pair (routed like a Service address, redirected in the pod).
const CAPTURED_VIP: &str = "10.96.250.1";
const MESSAGE: usize = 64;

fn pin_thread(cores: &[usize]) {
    let mut set = nix::sched::CpuSet::new();
    for core in cores {
        let _ = set.set(*core);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// Pins every thread of every process in `namespaces` to `cores` (a `taskset` list).
fn pin_processes(namespaces: &[&Namespace], cores: &str) {
    for namespace in namespaces {
        for pid in namespace.pids().unwrap_or_default() {
            let _ = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cores, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// One connection of the echo server: the first byte picks the mode. `G`: HTTP/1.1 keep-alive
/// (a fixed 200 per request); `D`: discard, then the byte count; anything else: echo.
fn serve_connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; 64 * 1024];
    let Ok(first) = stream.read(&mut buffer) else {
        return;
    };
    if first == 0 {
        return;
    }
    match buffer[0] {
        b'G' => {
            let mut pending = buffer[..first].to_vec();
            let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            loop {
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    if stream.write_all(response).is_err() {
                        return;
                    }
                }
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buffer[..n]),
                }
            }
        }
        b'D' => {
            let mut total = first as u64;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes());
        }
        _ => {
            if stream.write_all(&buffer[..first]).is_err() {
                return;
            }
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The echo server inside `namespace`, on every address, ports 7000 and 8080.
fn start_echo(namespace: &Namespace, pinned: Arc<AtomicBool>) {
    for port in [ECHO_PORT, HTTP_PORT] {
        let pinned = pinned.clone();
        let _detached = namespace.spawn_inside(move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("the echo port is free");
            for stream in listener.incoming().flatten() {
                let pinned = pinned.clone();
                std::thread::spawn(move || {
                    pin_thread(if pinned.load(Ordering::Relaxed) {
                        &[0]
                    } else {
                        &[0, 1]
                    });
                    serve_connection(stream);
                });
            }
        });
    }
}

/// Runs `work` on a thread inside `namespace` and waits for its result.
fn inside<T: Send + 'static>(
    namespace: &Namespace,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    namespace
        .spawn_inside(work)
        .join()
        .expect("the measuring thread finishes")
        .expect("the namespace can be entered")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// p50 and p99 round trips (µs) of 64-byte messages on one connection.
fn ping_pong(target: SocketAddr, plan: &Plan) -> (f64, f64) {
    pin_thread(&[0]);
    let mut stream = connect_retrying(target);
    let _ = stream.set_nodelay(true);
    let message = [b'p'; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut samples = Vec::with_capacity(plan.pings);
    for i in 0..plan.warmup + plan.pings {
        let start = Instant::now();
        stream
            .write_all(&message)
            .expect("the echo path takes the message");
        stream
            .read_exact(&mut reply)
            .expect("the echo path answers");
        if i >= plan.warmup {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn connect_retrying(target: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(stream) => return stream,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot reach {target}: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Gbit/s of `bytes` sent one way, counted by the server once all arrived.
fn bulk(target: SocketAddr, bytes: u64) -> f64 {
    let mut stream = connect_retrying(target);
    let mut chunk = vec![b'x'; 256 * 1024];
    chunk[0] = b'D';
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        stream
            .write_all(&chunk[..n])
            .expect("the bulk path takes the bytes");
        chunk[0] = b'x';
        sent += n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .expect("the sink reports its count");
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), bytes, "every byte arrived");
    bytes as f64 * 8.0 / elapsed / 1e9
}

const LOAD_REQUEST: &[u8] =
    b"GET /load HTTP/1.1\r\nhost: echo.sample:8080\r\nuser-agent: bench\r\n\r\n";

/// Sends one HTTP/1.1 request on `stream` and reads the echo server's `200 ok` to its end.
fn request_ok(stream: &mut TcpStream, buffer: &mut [u8]) {
    stream.write_all(LOAD_REQUEST).expect("the request is sent");
    let mut got = Vec::new();
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
        let n = stream.read(buffer).expect("a response");
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buffer[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// p50 and p99 (µs) of HTTP/1.1 requests as curl makes them: connect, one request, its response,
/// close; `warmup` first, then `count` measured.
fn request_per_connection(target: SocketAddr, warmup: usize, count: usize) -> (f64, f64) {
    pin_thread(&[0]);
    let mut buffer = [0u8; 4096];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        let mut stream = connect_retrying(target);
        let _ = stream.set_nodelay(true);
        request_ok(&mut stream, &mut buffer);
        drop(stream);
        if i >= warmup {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// HTTP/1.1 at `rate` requests/s over four keep-alive connections for `seconds`; the count.
fn http_load(target: SocketAddr, rate: u64, seconds: u64) -> u64 {
    let connections = 4u64;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = connect_retrying(target);
                let _ = stream.set_nodelay(true);
                let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
                let mut response = [0u8; 4096];
                let start = Instant::now();
                let mut done = 0u64;
                while start.elapsed() < Duration::from_secs(seconds) {
                    request_ok(&mut stream, &mut response);
                    done += 1;
                    let next = start + interval * done as u32;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                done
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

struct ProcessStats {
    rss_kb: u64,
    /// Private (heap, stacks) and file-backed (the binary's pages, shared by every proxy).
    anon_kb: u64,
    file_kb: u64,
}

fn process_stats(pid: u32) -> ProcessStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kb, anon_kb, file_kb) = (field("VmRSS:"), field("RssAnon:"), field("RssFile:"));
    ProcessStats {
        rss_kb,
        anon_kb,
        file_kb,
    }
}

/// CPU time of every thread of `pid`, in seconds: the scheduler's nanosecond count, where
/// `/proc/<pid>/stat` has 10 ms ticks and splits user from system time by sampling.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanoseconds: u64 = threads
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanoseconds as f64 / 1e9
}

/// The sidecar process of a pod (the only `causeway` in its namespace).
fn sidecar_pid(pod: &Pod) -> u32 {
    pod.namespace
        .pids()
        .unwrap()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("sidecar"))
        })
        .and_then(|pid| u32::try_from(pid).ok())
        .expect("the pod's sidecar runs")
}

/// The VIP of `service` as the pod's sidecar routes it (its `<vip>_<port>` listener).
fn vip(pod: &Pod, service: &str, port: u16) -> SocketAddr {
    let cluster = format!("outbound|{port}||{service}.sample.svc.cluster.local");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = pod
            .namespace
            .run("curl", &["-s", "http://127.0.0.1:15000/config_dump"])
            .unwrap_or_default();
        let dump: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(listeners) = dump["resources"]["listeners"].as_object() {
            for (name, listener) in listeners {
                if listener["cluster"] == cluster.as_str()
                    && let Ok(address) = name.replacen('_', ":", 1).parse()
                {
                    return address;
                }
            }
        }
        assert!(Instant::now() < deadline, "no listener for {cluster}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn haproxy(namespace: &Namespace, dir: &Path, name: &str, config: &str) -> Child {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config).unwrap();
    let check = namespace
        .command("haproxy")
        .args(["-c", "-f"])
        .arg(&path)
        .output()
        .expect("haproxy (Debian's package) is installed; scripts/bench-dataplane installs it");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    namespace
        .command("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("haproxy starts")
}

struct Row {
    name: &'static str,
    key: &'static str,
    p50: f64,
    p99: f64,
    /// CPU of the proxies on the path per round trip (kernel work they cause included).
    proxy_cpu_us: f64,
    gbit: f64,
}

fn main() {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if String::from_utf8_lossy(&uid).trim() != "0" {
        eprintln!("the data plane benchmark builds network namespaces and needs root");
        std::process::exit(1);
    }
    // BENCH_ONLY=latency,fresh,bulk,load runs some phases (for quicker iterations).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let phase = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    let plan = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let _ = causeway_lab::netns::sweep_stale();
    let dir = tempfile::tempdir().unwrap();
    let Networks {
        control,
        network1,
        network2,
    } = networks(true);
    let network2 = network2.expect("asked for");
    // The control plane is not on the measured path: core 1.
    let plane = {
        pin_thread(&[1]);
        let plane = start_control_plane(
            &control,
            MeshOptions {
                gateway: true,
                discovery_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                v1_ip: "10.10.99.9",
                v2_ip: "10.20.99.9",
                gateway_ip: "172.18.255.2",
                ..MeshOptions::default()
            },
            &["expose-services.yaml"],
        );
        pin_thread(&[0, 1]);
        plane
    };
    let ports = [("tcp-echo", ECHO_PORT), ("http", HTTP_PORT)];
    plane.workload("cluster01", "echo", "10.10.5.2", &ports);
    plane.workload("cluster02", "echo-remote", "10.20.5.2", &ports);
    let (gateway, router) = start_gateway(&network1, &network2, &plane, dir.path());

    let pinned = Arc::new(AtomicBool::new(true));
    let mut echo1 = Pod::create("echo", "10.10.5.2", &network1, dir.path(), 1);
    start_echo(&echo1.namespace, pinned.clone());
    // Istio's default: no access log.
    echo1.access_log = false;
    echo1.inject(
        &plane,
        CONTROL_IP,
        CLUSTER01,
        "helloworld",
        r#"{"app":"echo"}"#,
    );
    let mut echo2 = Pod::create("echo-remote", "10.20.5.2", &network2, dir.path(), 1);
    start_echo(&echo2.namespace, pinned.clone());
    echo2.access_log = false;
    echo2.inject(
        &plane,
        "10.0.2.1",
        CLUSTER02,
        "helloworld",
        r#"{"app":"echo-remote"}"#,
    );
    let mut client = Pod::create("client", "10.10.9.2", &network1, dir.path(), 2);
    client.access_log = false;
    client.inject(
        &plane,
        CONTROL_IP,
        CLUSTER01,
        "sleep",
        r#"{"app":"client"}"#,
    );
    let plain_echo = Pod::create("plain-echo", "10.10.6.2", &network1, dir.path(), 3);
    start_echo(&plain_echo.namespace, pinned.clone());
    let plain_client = Pod::create("plain-client", "10.10.8.2", &network1, dir.path(), 4);

    // The same HAProxy pair behind iptables capture, as sidecars are, in namespaces of its own:
    // a namespace with NAT rules tracks every connection (conntrack), which the plain pair must
    // not pay. Not a target; it shows what capture costs any proxy.
    let captured_echo = Pod::create("captured-echo", "10.10.7.2", &network1, dir.path(), 5);
    start_echo(&captured_echo.namespace, pinned.clone());
    let captured_client = Pod::create("captured-client", "10.10.4.2", &network1, dir.path(), 6);

    // HAProxy: the same mesh certificates (ECDSA P-256), mutual TLS, TCP mode, one thread each.
    let pem = format!("{}{}", plane.valid.cert, plane.valid.key);
    std::fs::write(dir.path().join("haproxy.pem"), pem).unwrap();
    std::fs::write(dir.path().join("roots.pem"), &plane.roots_pem).unwrap();
    let certs = dir.path().display().to_string();
    let haproxy_pair = |client: &Pod, server: &Pod, server_port: u16| {
        let defaults = "global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n";
        let tls = format!("ssl crt {certs}/haproxy.pem ca-file {certs}/roots.pem verify required");
        let server_side = haproxy(
            &server.namespace,
            dir.path(),
            &format!("haproxy-{}", server.name),
            &format!(
                "{defaults}frontend tls\n  bind :{HAPROXY_SERVER_PORT} {tls}\n  default_backend echo\nbackend echo\n  server local 127.0.0.1:{ECHO_PORT}\n"
            ),
        );
        let client_side = haproxy(
            &client.namespace,
            dir.path(),
            &format!("haproxy-{}", client.name),
            &format!(
                "{defaults}frontend plain\n  bind 127.0.0.1:{HAPROXY_CLIENT_PORT}\n  default_backend tls\nbackend tls\n  server echo {}:{server_port} {tls}\n",
                server.ip
            ),
        );
        (client_side, server_side)
    };
    let (mut client_haproxy, mut server_haproxy) =
        haproxy_pair(&plain_client, &plain_echo, HAPROXY_SERVER_PORT);
    let (mut captured_client_haproxy, mut captured_server_haproxy) =
        haproxy_pair(&captured_client, &captured_echo, CAPTURED_SERVER_PORT);
    let nat = |namespace: &Namespace, rule: &str| {
        let status = namespace
            .command("iptables")
            .args(["-t", "nat", "-A"])
            .args(rule.split_whitespace())
            .status()
            .expect("iptables runs");
        assert!(status.success(), "iptables -t nat -A {rule}");
    };
    nat(
        &captured_client.namespace,
        &format!(
            "OUTPUT -p tcp -d {CAPTURED_VIP} --dport {ECHO_PORT} -j REDIRECT --to-ports {HAPROXY_CLIENT_PORT}"
        ),
    );
    nat(
        &captured_echo.namespace,
        &format!(
            "PREROUTING -p tcp --dport {CAPTURED_SERVER_PORT} -j REDIRECT --to-ports {HAPROXY_SERVER_PORT}"
        ),
    );

    let echo_vip = vip(&client, "echo", ECHO_PORT);
    let remote_vip = vip(&client, "echo-remote", ECHO_PORT);
    let http_vip = vip(&client, "echo", HTTP_PORT);
    let direct: SocketAddr = SocketAddr::from(([10, 10, 6, 2], ECHO_PORT));
    let through_haproxy = SocketAddr::from(([127, 0, 0, 1], HAPROXY_CLIENT_PORT));
    let client_sidecar = sidecar_pid(&client);
    let server_sidecar = sidecar_pid(&echo1);
    std::thread::sleep(Duration::from_secs(1));
    let idle = process_stats(client_sidecar);
    let idle_rss_kb = idle.rss_kb;

    // BENCH_PERF=<file>: profile the client sidecar during the phases run (`perf report -i <file>`).
    let profiler = std::env::var("BENCH_PERF").ok().map(|output| {
        std::process::Command::new("perf")
            .args(["record", "-g", "-F", "4000", "-o", &output, "-p"])
            .arg(client_sidecar.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf runs")
    });
    let everything = [
        &network1,
        &network2,
        &gateway,
        &client.namespace,
        &echo1.namespace,
        &echo2.namespace,
        &plain_echo.namespace,
        &plain_client.namespace,
        &captured_echo.namespace,
        &captured_client.namespace,
    ];
    pin_processes(&everything, "0");
    let captured_haproxy = SocketAddr::new(CAPTURED_VIP.parse().unwrap(), ECHO_PORT);
    let remote_sidecar = sidecar_pid(&echo2);
    // Each path: who measures from where, and the proxies on it (whose CPU is counted).
    let paths: [(&'static str, &'static str, &Namespace, SocketAddr, Vec<u32>); 5] = [
        (
            "direct TCP",
            "direct",
            &plain_client.namespace,
            direct,
            vec![],
        ),
        (
            "Causeway sidecar pair, mTLS",
            "sidecar",
            &client.namespace,
            echo_vip,
            vec![client_sidecar, server_sidecar],
        ),
        (
            "sidecar -> router -> sidecar",
            "gateway",
            &client.namespace,
            remote_vip,
            vec![client_sidecar, router.id(), remote_sidecar],
        ),
        (
            "HAProxy pair, mTLS",
            "haproxy",
            &plain_client.namespace,
            through_haproxy,
            vec![client_haproxy.id(), server_haproxy.id()],
        ),
        (
            "HAProxy pair, mTLS, captured",
            "haproxy_captured",
            &captured_client.namespace,
            captured_haproxy,
            vec![captured_client_haproxy.id(), captured_server_haproxy.id()],
        ),
    ];
    // Runs go round the paths, so that a slow spell of the machine touches every path alike.
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); paths.len()];
    let runs = if phase("latency") { plan.runs } else { 0 };
    let proxies_cpu = |pids: &[u32]| pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    for _ in 0..runs {
        for (i, (_, _, namespace, target, proxies)) in paths.iter().enumerate() {
            let (target, warmup, pings) = (*target, plan.warmup, plan.pings);
            let cpu_before = proxies_cpu(proxies);
            let (p50, p99) = inside(namespace, move || {
                ping_pong(
                    target,
                    &Plan {
                        runs: 1,
                        pings,
                        warmup,
                        bulk_bytes: 0,
                        load_runs: 0,
                        load_seconds: 0,
                        fresh_requests: 0,
                    },
                )
            });
            let round_trips = (warmup + pings) as f64;
            samples[i].0.push(p50);
            samples[i].1.push(p99);
            samples[i]
                .2
                .push((proxies_cpu(proxies) - cpu_before) * 1e6 / round_trips);
        }
    }
    let mut rows: Vec<Row> = paths
        .iter()
        .zip(samples)
        .map(|((name, key, ..), (p50s, p99s, cpu))| Row {
            name,
            key,
            p50: median(p50s),
            p99: median(p99s),
            proxy_cpu_us: median(cpu),
            gbit: f64::NAN,
        })
        .collect();
    // HTTP/1.1 on a new connection per request (curl, scripts), pinned like the latency runs: the
    // sidecar reuses the mTLS connection an earlier request left in its pool; HAProxy in TCP
    // mode makes a TLS handshake per connection (Envoy would pool as the sidecar does).
    let fresh_paths: [(&'static str, &'static str, &Namespace, SocketAddr); 4] = [
        ("direct TCP", "direct", &plain_client.namespace, direct),
        (
            "Causeway sidecar pair, mTLS",
            "sidecar",
            &client.namespace,
            http_vip,
        ),
        (
            "HAProxy pair, mTLS",
            "haproxy",
            &plain_client.namespace,
            through_haproxy,
        ),
        (
            "HAProxy pair, mTLS, captured",
            "haproxy_captured",
            &captured_client.namespace,
            captured_haproxy,
        ),
    ];
    let mut fresh_samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); fresh_paths.len()];
    let runs = if phase("fresh") { plan.runs } else { 0 };
    for _ in 0..runs {
        for (i, (_, _, namespace, target)) in fresh_paths.iter().enumerate() {
            let (target, count) = (*target, plan.fresh_requests);
            let (p50, p99) = inside(namespace, move || {
                request_per_connection(target, count / 10, count)
            });
            fresh_samples[i].0.push(p50);
            fresh_samples[i].1.push(p99);
        }
    }
    let fresh: Vec<(&str, &str, f64, f64)> = fresh_paths
        .iter()
        .zip(fresh_samples)
        .map(|((name, key, ..), (p50s, p99s))| (*name, *key, median(p50s), median(p99s)))
        .collect();

    // Throughput: unpinned, as the issue's reference figures were taken.
    pinned.store(false, Ordering::Relaxed);
    pin_processes(&everything, "0,1");
    for row in rows.iter_mut().filter(|_| phase("bulk")) {
        let (_, _, namespace, target, _) = paths.iter().find(|p| p.1 == row.key).unwrap();
        let (namespace, target) = (*namespace, *target);
        let bytes = plan.bulk_bytes;
        let runs: Vec<f64> = (0..plan.runs.min(3))
            .map(|_| inside(namespace, move || bulk(target, bytes)))
            .collect();
        row.gbit = median(runs);
    }

    // Each proxy pair under 1,000 HTTP/1.1 requests/s (unpinned, as a node runs them): CPU per
    // 1,000 requests, which is also vCPU per 1,000 requests/s. HAProxy forwards the same bytes
    // in TCP mode; the sidecars parse, count and time every request on top.
    let load_paths: [(&'static str, &'static str, u32, u32, &Namespace, SocketAddr); 3] = [
        (
            "Causeway sidecar pair, mTLS",
            "sidecar",
            client_sidecar,
            server_sidecar,
            &client.namespace,
            http_vip,
        ),
        (
            "HAProxy pair, mTLS",
            "haproxy",
            client_haproxy.id(),
            server_haproxy.id(),
            &plain_client.namespace,
            through_haproxy,
        ),
        (
            "HAProxy pair, mTLS, captured",
            "haproxy_captured",
            captured_client_haproxy.id(),
            captured_server_haproxy.id(),
            &captured_client.namespace,
            captured_haproxy,
        ),
    ];
    let mut load_samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); load_paths.len()];
    let mut loaded_rss_kb = 0;
    let mut sidecar_rates = Vec::new();
    let runs = if phase("load") { plan.load_runs } else { 0 };
    for _ in 0..runs {
        for (i, (_, key, client_pid, server_pid, namespace, target)) in
            load_paths.iter().enumerate()
        {
            let (client_pid, server_pid, target) = (*client_pid, *server_pid, *target);
            let before = (cpu_seconds(client_pid), cpu_seconds(server_pid));
            let seconds = plan.load_seconds;
            let started = Instant::now();
            let requests = inside(namespace, move || http_load(target, 1000, seconds));
            let elapsed = started.elapsed().as_secs_f64();
            let thousands = requests as f64 / 1000.0;
            load_samples[i]
                .0
                .push((cpu_seconds(client_pid) - before.0) / thousands);
            load_samples[i]
                .1
                .push((cpu_seconds(server_pid) - before.1) / thousands);
            if *key == "sidecar" {
                loaded_rss_kb = loaded_rss_kb.max(process_stats(client_pid).rss_kb);
                sidecar_rates.push(requests as f64 / elapsed);
            }
        }
    }
    let loads: Vec<(&str, &str, f64, f64)> = load_paths
        .iter()
        .zip(load_samples)
        .map(|((name, key, ..), (client, server))| (*name, *key, median(client), median(server)))
        .collect();
    if let Some(mut profiler) = profiler {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(profiler.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = profiler.wait();
    }
    let rate = median(sidecar_rates);

    let direct_row = rows
        .iter()
        .find(|r| r.key == "direct")
        .map(|r| (r.p50, r.p99))
        .unwrap();
    println!();
    println!(
        "Data plane: 64-byte ping-pong on one connection, all on core 0 ({} runs x {} round trips, medians); bulk unpinned",
        plan.runs, plan.pings
    );
    println!(
        "{:<32} {:>8} {:>8} {:>9} {:>9} {:>13} {:>8}",
        "path", "p50 us", "p99 us", "+p50 us", "+p99 us", "proxy CPU us", "Gbit/s"
    );
    for row in &rows {
        println!(
            "{:<32} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>13.1} {:>8.2}",
            row.name,
            row.p50,
            row.p99,
            row.p50 - direct_row.0,
            row.p99 - direct_row.1,
            row.proxy_cpu_us,
            row.gbit
        );
    }
    println!(
        "proxy CPU us: the CPU time of the path's proxies per round trip, the kernel work they cause included"
    );
    let added = |key: &str| {
        let row = rows.iter().find(|r| r.key == key).unwrap();
        (row.p50 - direct_row.0, row.p99 - direct_row.1)
    };
    let (sidecar_added, haproxy_added) = (added("sidecar"), added("haproxy"));
    let gbit = |key: &str| rows.iter().find(|r| r.key == key).unwrap().gbit;
    println!();
    println!(
        "added latency, sidecar pair / HAProxy pair: p50 {:.2}x, p99 {:.2}x (target <= 0.8x)",
        sidecar_added.0 / haproxy_added.0,
        sidecar_added.1 / haproxy_added.1
    );
    println!(
        "throughput, sidecar pair / HAProxy pair: {:.2}x (target >= 1.25x)",
        gbit("sidecar") / gbit("haproxy")
    );
    println!(
        "client sidecar RSS: idle {:.1} MB (target < 10), under {rate:.0} HTTP/1.1 req/s {:.1} MB (target < 15)",
        idle_rss_kb as f64 / 1024.0,
        loaded_rss_kb as f64 / 1024.0
    );
    println!();
    println!(
        "HTTP/1.1 request on a new connection each (connect, request, response, close), core 0 ({} runs x {} requests, medians)",
        plan.runs, plan.fresh_requests
    );
    println!("{:<32} {:>8} {:>8}", "path", "p50 us", "p99 us");
    for (name, _, p50, p99) in &fresh {
        println!("{name:<32} {p50:>8.1} {p99:>8.1}");
    }
    println!();
    println!(
        "CPU per 1,000 HTTP/1.1 requests at 1,000 req/s (= vCPU per 1,000 req/s), unpinned, median of {} runs of {} s",
        plan.load_runs, plan.load_seconds
    );
    println!(
        "{:<32} {:>12} {:>12}",
        "proxy pair", "client side", "server side"
    );
    for (name, _, client_cpu, server_cpu) in &loads {
        println!("{name:<32} {client_cpu:>12.3} {server_cpu:>12.3}");
    }
    println!(
        "sidecar target: < 0.06 each; the kernel's network path (TCP, loopback and veth delivery, wake-ups) is charged to the sender, so it is in every row"
    );
    println!(
        "idle RSS: {:.1} MB private (heap, stacks), {:.1} MB of the binary's pages (shared by every proxy on the node)",
        idle.anon_kb as f64 / 1024.0,
        idle.file_kb as f64 / 1024.0
    );
    let mut json = serde_json::Map::new();
    for row in &rows {
        json.insert(
            format!("{}_p50_us", row.key),
            serde_json::json!((row.p50 * 10.0).round() / 10.0),
        );
        json.insert(
            format!("{}_p99_us", row.key),
            serde_json::json!((row.p99 * 10.0).round() / 10.0),
        );
        if row.key != "direct" {
            json.insert(
                format!("{}_proxy_cpu_us_per_round_trip", row.key),
                serde_json::json!((row.proxy_cpu_us * 10.0).round() / 10.0),
            );
        }
        json.insert(
            format!("{}_gbit_s", row.key),
            serde_json::json!((row.gbit * 100.0).round() / 100.0),
        );
    }
    for (_, key, p50, p99) in &fresh {
        json.insert(
            format!("{key}_fresh_connection_request_p50_us"),
            serde_json::json!((p50 * 10.0).round() / 10.0),
        );
        json.insert(
            format!("{key}_fresh_connection_request_p99_us"),
            serde_json::json!((p99 * 10.0).round() / 10.0),
        );
    }
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    json.insert(
        "sidecar_added_p50_ratio_to_haproxy".into(),
        serde_json::json!(round3(sidecar_added.0 / haproxy_added.0)),
    );
    json.insert(
        "sidecar_added_p99_ratio_to_haproxy".into(),
        serde_json::json!(round3(sidecar_added.1 / haproxy_added.1)),
    );
    json.insert(
        "sidecar_throughput_ratio_to_haproxy".into(),
        serde_json::json!(round3(gbit("sidecar") / gbit("haproxy"))),
    );
    json.insert(
        "idle_rss_mb".into(),
        serde_json::json!(round3(idle_rss_kb as f64 / 1024.0)),
    );
    json.insert(
        "loaded_rss_mb".into(),
        serde_json::json!(round3(loaded_rss_kb as f64 / 1024.0)),
    );
    json.insert(
        "load_requests_per_s".into(),
        serde_json::json!(rate.round()),
    );
    for (_, key, client_cpu, server_cpu) in &loads {
        let prefix = key.replace("sidecar", "");
        let (client_key, server_key) = if *key == "sidecar" {
            ("client_sidecar".to_owned(), "server_sidecar".to_owned())
        } else {
            (format!("{prefix}_client"), format!("{prefix}_server"))
        };
        json.insert(
            format!("{client_key}_vcpu_per_1000_rps"),
            serde_json::json!(round3(*client_cpu)),
        );
        json.insert(
            format!("{server_key}_vcpu_per_1000_rps"),
            serde_json::json!(round3(*server_cpu)),
        );
    }
    println!("{}", serde_json::Value::Object(json));

    for child in [
        &mut server_haproxy,
        &mut client_haproxy,
        &mut captured_server_haproxy,
        &mut captured_client_haproxy,
    ] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut router = router;
    let _ = router.kill();
    let _ = router.wait();
    drop((client, echo1, echo2, plain_echo, plain_client, gateway));
    drop((network1, network2, control, plane));
}
