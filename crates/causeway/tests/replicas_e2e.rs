//! Discovery as two replicas of one Deployment (`values.pilot.replicaCount=2`), as users run
//! istiod: sidecars spread over both through the `istiod` Service, one replica leads (the Lease
//! `istio-namespace-controller-election`) and writes the root-certificate ConfigMaps, and
//! `kill -9` of the replica a sidecar is connected to, under a steady load of requests through
//! that sidecar, fails no request; the sidecar reconnects and gets a change made after the kill.
//! Needs root, as CI has.

mod fixtures;

use std::time::{Duration, Instant};

use fixtures::lab::{TestLab, eventually, printed, sample, topology};

const C1: &str = "kind-cluster01";
const WAIT: Duration = Duration::from_secs(60);
/// Requests of the steady load, one every 20 ms or so: about ten seconds of traffic.
const REQUESTS: usize = 400;

fn istiod_pods(lab: &TestLab) -> Vec<String> {
    lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "istio-system",
            "-l",
            "app=istiod",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The proxies connected to one replica, from its `/debug/syncz`.
fn connected_proxies(lab: &TestLab, istiod: &str) -> String {
    let output = lab.exec(
        C1,
        "istio-system",
        istiod,
        "discovery",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:15014/debug/syncz",
        ],
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The host's process ID of the pod's discovery: the process whose environment names the pod.
fn discovery_pid(pod: &str) -> u32 {
    let wanted = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_discovery = cmdline
            .split(|byte| *byte == 0)
            .any(|argument| argument == b"discovery");
        if !is_discovery {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ
            .split(|byte| *byte == 0)
            .any(|variable| variable == wanted.as_bytes())
        {
            return pid;
        }
    }
    panic!("no discovery process has {wanted} in its environment");
}

/// Seconds since midnight (UTC) of a log line's RFC 3339 timestamp, or of `date -u +%T.%N`.
fn seconds_of_day(text: &str) -> f64 {
    let time = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .rsplit('T')
        .next()
        .unwrap_or_default()
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let mut field = || -> f64 {
        parts
            .next()
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("not a time of day: {text:?}"))
    };
    field() * 3600.0 + field() * 60.0 + field()
}

fn seconds_of_day_now() -> f64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (since_epoch.as_secs() % 86_400) as f64 + f64::from(since_epoch.subsec_micros()) / 1e6
}

/// `later - earlier` in seconds, across midnight too.
fn elapsed(earlier: f64, later: f64) -> f64 {
    (later - earlier).rem_euclid(86_400.0)
}

#[test]
fn killing_the_replica_a_sidecar_uses_fails_no_request_and_the_sidecar_resyncs_on_another() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    let installed = lab.causeway(&[
        "install",
        "-y",
        "-f",
        &topology("multi-primary/cluster01.yaml"),
        "--set",
        "values.pilot.replicaCount=2",
        "--context",
        C1,
    ]);
    assert!(installed.status.success(), "{}", printed(&installed));
    lab.ok(
        C1,
        &[
            "rollout",
            "status",
            "deploy/istiod",
            "-n",
            "istio-system",
            "--timeout=60s",
        ],
    );
    let replicas = istiod_pods(&lab);
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    // Both started together with no cacerts: one made the self-signed root, the other uses it
    // (were there two roots, a sidecar moving to the other replica could not verify it).
    let origins: Vec<String> = replicas
        .iter()
        .map(|pod| {
            let logs = lab.ok(C1, &["logs", "-n", "istio-system", pod]);
            logs.lines()
                .find(|line| line.contains("mesh CA loaded"))
                .unwrap_or_else(|| panic!("{pod} logs its CA: {logs}"))
                .to_owned()
        })
        .collect();
    let made = origins
        .iter()
        .filter(|line| line.contains("a new self-signed root"))
        .count();
    assert_eq!(made, 1, "{origins:?}");

    // One leader, named by its pod, writes the ConfigMaps.
    let holder = eventually("a leader", WAIT, || {
        let holder = lab.ok(
            C1,
            &[
                "get",
                "lease",
                "-n",
                "istio-system",
                "istio-namespace-controller-election",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        if replicas.contains(&holder) {
            Ok(holder)
        } else {
            Err(format!("the lease's holder is {holder:?}"))
        }
    });
    let led: Vec<&String> = replicas
        .iter()
        .filter(|pod| {
            lab.ok(C1, &["logs", "-n", "istio-system", pod])
                .contains("leader election lock obtained")
        })
        .collect();
    assert_eq!(led, vec![&holder], "exactly the holder ever led");

    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.ok(
        C1,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    lab.apply(C1, "sample", &sample("helloworld.yaml"));
    lab.apply(C1, "sample", &sample("sleep.yaml"));
    lab.wait_ready(C1, "sample", "app=sleep");
    lab.wait_ready(C1, "sample", "app=helloworld");
    let sleep = lab.pod(C1, "sample", "app=sleep");
    let published = lab.ok(
        C1,
        &[
            "get",
            "configmap",
            "-n",
            "sample",
            "istio-ca-root-cert",
            "-o",
            "name",
        ],
    );
    assert_eq!(published.trim(), "configmap/istio-ca-root-cert");

    // The replica the sleep sidecar's stream is on.
    let serving = eventually("the sleep sidecar on a replica", WAIT, || {
        replicas
            .iter()
            .find(|pod| connected_proxies(&lab, pod).contains(&sleep))
            .cloned()
            .ok_or_else(|| format!("neither replica lists {sleep} in /debug/syncz"))
    });
    let survivor = replicas
        .iter()
        .find(|pod| **pod != serving)
        .unwrap()
        .clone();
    eventually("a first request through the sidecar", WAIT, || {
        let output = lab.exec(
            C1,
            "sample",
            &sleep,
            "sleep",
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "http://helloworld.sample:5000/hello",
            ],
        );
        if output.status.success() {
            Ok(())
        } else {
            Err(printed(&output))
        }
    });

    // A steady load through the sidecar for about ten seconds: every status code is kept.
    let script = format!(
        "for i in $(seq 1 {REQUESTS}); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 http://helloworld.sample:5000/hello; sleep 0.02; done"
    );
    let load = {
        let kubeconfig = lab.kubeconfig();
        let sleep = sleep.clone();
        std::thread::spawn(move || {
            std::process::Command::new(fixtures::lab::kubectl_binary())
                .args([
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "--context",
                    C1,
                ])
                .args([
                    "exec", "-n", "sample", "-c", "sleep", &sleep, "--", "sh", "-c", &script,
                ])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    let pid = discovery_pid(&serving);
    let killed = Instant::now();
    let killed_at = seconds_of_day_now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // A change after the kill: a new Service the sidecar must learn from whichever replica it
    // reconnects to.
    lab.apply(
        C1,
        "sample",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: probe\nspec:\n  selector:\n    app: helloworld\n  ports:\n  - name: http\n    port: 5000\n",
    );
    let changed_at = seconds_of_day_now();
    let seen = lab.exec(
        C1,
        "sample",
        &sleep,
        "sleep",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 1000); do if curl -s http://127.0.0.1:15000/clusters | grep -q 'probe.sample.svc.cluster.local'; then date -u +%T.%N; exit 0; fi; sleep 0.01; done; exit 1",
        ],
    );
    assert!(
        seen.status.success(),
        "the sidecar never got the change: {}",
        printed(&seen)
    );
    let seen_at = seconds_of_day(String::from_utf8_lossy(&seen.stdout).trim());
    let change_seen_after_kill = killed.elapsed();

    let loaded = load.join().unwrap();
    assert!(loaded.status.success(), "{}", printed(&loaded));
    let codes = String::from_utf8_lossy(&loaded.stdout).into_owned();
    let total = codes.lines().count();
    let failed: Vec<&str> = codes.lines().filter(|code| *code != "200").collect();
    assert_eq!(total, REQUESTS, "{codes}");
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );

    // From the sidecar's log: when it lost the stream after the kill, when it had one again.
    let sidecar_log = lab.ok(C1, &["logs", "-n", "sample", &sleep, "-c", "istio-proxy"]);
    let after_kill = sidecar_log.lines().skip_while(|line| {
        !line.contains("no stream to discovery") || elapsed(killed_at, seconds_of_day(line)) > 60.0
    });
    let mut after_kill = after_kill.peekable();
    let lost = *after_kill
        .peek()
        .unwrap_or_else(|| panic!("the sidecar saw its stream end after the kill: {sidecar_log}"));
    let reopened = after_kill
        .find(|line| line.contains("stream to discovery open"))
        .unwrap_or_else(|| panic!("the sidecar reconnected: {sidecar_log}"));
    let lost_at = seconds_of_day(lost);
    let reopened_at = seconds_of_day(reopened);
    let noticed = elapsed(killed_at, lost_at);
    let reconnect = elapsed(lost_at, reopened_at);
    // From the later of the reconnect and the change: how long the sidecar went without it.
    let resync = elapsed(reopened_at, seen_at).min(elapsed(changed_at, seen_at));
    let change_made = elapsed(killed_at, changed_at);
    let now_on = replicas
        .iter()
        .filter(|pod| connected_proxies(&lab, pod).contains(&sleep))
        .cloned()
        .collect::<Vec<_>>();
    eprintln!(
        "killed {serving} (pid {pid}); survivor {survivor}; sidecar now on {now_on:?}\n\
         {total} requests, {} failed\n\
         kill → the sidecar's stream ended: {noticed:.3} s\n\
         stream ended → reopened: {reconnect:.3} s\n\
         kill → a change made (a new Service): {change_made:.3} s\n\
         reopened or changed (the later) → the change in the sidecar: {resync:.3} s\n\
         kill → change seen (test's clock, including kubectl): {:.3} s",
        failed.len(),
        change_seen_after_kill.as_secs_f64(),
    );
    assert_eq!(now_on.len(), 1, "the sidecar has one stream: {now_on:?}");
    // The proxy retries after 200-400 ms; generous bounds, the measured figures are printed.
    assert!(reconnect < 5.0, "reconnected in {reconnect:.3} s");
    assert!(resync < 5.0, "resynced in {resync:.3} s");
}
