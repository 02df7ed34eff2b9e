//! Network namespaces as the lab and the data plane's end-to-end tests build them. These need
//! root, as CI has; without it they fail with `NetnsError`'s reason rather than pass unchecked.

use causeway_lab::netns::{Namespace, sweep_stale};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A TCP server inside `namespace` on `address:port` that answers each connection with
/// `hello from <label>`. Returns once it listens.
fn serve(namespace: &Namespace, address: &str, port: u16, label: &str) -> Child {
    let program = format!(
        "import socket,sys\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{address}', {port})); s.listen(16); print('ready', flush=True)\n\
         while True:\n    c,_=s.accept(); c.sendall(b'hello from {label}'); c.close()\n"
    );
    let mut child = namespace
        .command("python3")
        .args(["-c", &program])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts inside the namespace");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the server did not start");
    child
}

/// What a connection from inside `namespace` to `address:port` reads, or the error.
fn fetch(namespace: &Namespace, address: &str, port: u16) -> Result<String, String> {
    let program = format!(
        "import socket\n\
         try:\n    c=socket.create_connection(('{address}', {port}), timeout=1); print(c.recv(100).decode())\n\
         except OSError as e:\n    print('error:', e)\n"
    );
    let output = namespace.run("python3", &["-c", &program]).unwrap();
    let output = output.trim().to_owned();
    match output.strip_prefix("error: ") {
        Some(error) => Err(error.to_owned()),
        None => Ok(output),
    }
}

#[test]
fn linked_namespaces_reach_each_other_and_unlinked_ones_do_not() {
    let client = Namespace::create("client").unwrap();
    let server = Namespace::create("server").unwrap();
    let stranger = Namespace::create("stranger").unwrap();
    client
        .link("eth0", "10.251.0.1/30", &server, "eth0", "10.251.0.2/30")
        .unwrap();
    let mut listening = serve(&server, "10.251.0.2", 5000, "server");

    assert_eq!(
        fetch(&client, "10.251.0.2", 5000).as_deref(),
        Ok("hello from server")
    );
    let refused = fetch(&stranger, "10.251.0.2", 5000);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("unreachable")),
        "a namespace without a link reached the server: {refused:?}"
    );
    listening.kill().unwrap();
    listening.wait().unwrap();
}

#[test]
fn a_forwarding_namespace_routes_between_two_networks() {
    let left = Namespace::create("left").unwrap();
    let router = Namespace::create("router").unwrap();
    let right = Namespace::create("right").unwrap();
    left.link("eth0", "10.252.1.2/24", &router, "left", "10.252.1.1/24")
        .unwrap();
    right
        .link("eth0", "10.252.2.2/24", &router, "right", "10.252.2.1/24")
        .unwrap();
    let mut listening = serve(&right, "0.0.0.0", 5000, "right");

    // Without routes and forwarding, the other network is out of reach.
    assert!(fetch(&left, "10.252.2.2", 5000).is_err());
    left.route("default", "10.252.1.1").unwrap();
    right.route("default", "10.252.2.1").unwrap();
    router.enable_forwarding().unwrap();
    assert_eq!(
        fetch(&left, "10.252.2.2", 5000).as_deref(),
        Ok("hello from right")
    );
    listening.kill().unwrap();
    listening.wait().unwrap();
}

fn namespaces() -> String {
    String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn dropping_a_namespace_kills_what_runs_inside_and_removes_it() {
    let namespace = Namespace::create("doomed").unwrap();
    let name = namespace.name().to_owned();
    let mut sleeper = namespace.command("sleep").arg("600").spawn().unwrap();
    let started = Instant::now();
    while namespace.pids().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sleep never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(namespaces().contains(&name));

    drop(namespace);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process inside was not killed");
    assert!(!namespaces().contains(&name), "{name} is still listed");
}

#[test]
fn namespaces_left_by_a_dead_process_are_swept() {
    // A namespace named as one made by a process that has exited.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let name = format!("cw-{dead_pid}-0-left-behind");
    let created = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(created.success());
    let ours = Namespace::create("alive").unwrap();

    let swept = sweep_stale().unwrap();
    assert!(swept.contains(&name), "{swept:?}");
    assert!(!namespaces().contains(&name));
    assert!(
        namespaces().contains(ours.name()),
        "a namespace of a live process was swept"
    );
}

#[test]
fn a_thread_inside_a_namespace_binds_its_addresses_and_the_process_stays_outside() {
    let inside = Namespace::create("thread").unwrap();
    let other = Namespace::create("other").unwrap();
    inside
        .link("eth0", "10.253.9.1/30", &other, "eth0", "10.253.9.2/30")
        .unwrap();
    let bound = inside
        .spawn_inside(|| std::net::TcpListener::bind("10.253.9.1:0").map(|l| l.local_addr()))
        .join()
        .unwrap()
        .expect("the thread entered the namespace");
    assert!(
        bound.is_ok(),
        "the namespace's address was not there: {bound:?}"
    );
    // The test's own thread is still on the host, where that address does not exist.
    assert!(std::net::TcpListener::bind("10.253.9.1:0").is_err());

    // A namespace deleted behind the guard's back cannot be entered, and the error names it.
    let vanished = Namespace::create("vanished").unwrap();
    let deleted = std::process::Command::new("ip")
        .args(["netns", "del", vanished.name()])
        .status()
        .unwrap();
    assert!(deleted.success());
    let error = vanished
        .spawn_inside(|| ())
        .join()
        .unwrap()
        .expect_err("a deleted namespace was entered")
        .to_string();
    assert!(error.contains(vanished.name()), "{error}");
}
