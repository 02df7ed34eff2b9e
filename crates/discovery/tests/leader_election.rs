//! Replicas of discovery against one lab API server: exactly one leads, on the Lease
//! `istio-namespace-controller-election`; only the leader writes the root-certificate
//! ConfigMaps; a graceful stop hands leadership over within a retry period, and a replica that
//! dies without a word (its tasks dropped, as under SIGKILL) is replaced once its lease expires.

use causeway_discovery::{Discovery, testing};
use causeway_lab::testing::{eventually, fixtures};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

const LEASE: &str = "istio-namespace-controller-election";
/// Short, so that an expiry fits a test: renewals every 500 ms, take-over after 2 s.
const LEASE_DURATION: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

async fn cluster() -> (
    causeway_lab::apiserver::RunningApiServer,
    kube::Client,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) =
        fixtures::mesh_cluster("cluster01", "10.96.0.0/16", dir.path(), "").await;
    (server, client, dir)
}

async fn replica(client: &kube::Client, identity: &str) -> Discovery {
    let config = causeway_discovery::DiscoveryConfig {
        leader_identity: identity.to_owned(),
        leader_lease_duration: LEASE_DURATION,
        ..testing::config("cluster01", "")
    };
    Discovery::start(config, client.clone())
        .await
        .expect("discovery starts")
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "istio-system")
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|lease| lease.spec?.holder_identity)
}

async fn transitions(client: &kube::Client) -> i32 {
    Api::<Lease>::namespaced(client.clone(), "istio-system")
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .and_then(|spec| spec.lease_transitions)
        .unwrap_or_default()
}

async fn root_cert(client: &kube::Client, namespace: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt("istio-ca-root-cert")
        .await
        .unwrap()
}

async fn leads(discovery: &Discovery) -> bool {
    *discovery.leading.borrow()
}

/// Waits for `discovery` to lead and returns how long that took.
async fn eventually_leads(discovery: &Discovery, what: &str) -> Duration {
    let start = Instant::now();
    let mut leading = discovery.leading.clone();
    tokio::time::timeout(WAIT, leading.wait_for(|leads| *leads))
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
        .unwrap();
    start.elapsed()
}

#[tokio::test]
async fn one_of_two_replicas_leads_and_a_graceful_stop_hands_over_within_a_retry_period() {
    let (_server, client, _dir) = cluster().await;
    let first = replica(&client, "discovery-a").await;
    eventually_leads(&first, "the first replica leads").await;
    let second = replica(&client, "discovery-b").await;
    // Four retry periods: the second replica reads a lease that is renewed all along.
    for _ in 0..8 {
        tokio::time::sleep(LEASE_DURATION / 4).await;
        assert!(leads(&first).await, "the first replica keeps leading");
        assert!(!leads(&second).await, "the second replica follows");
    }
    assert_eq!(holder(&client).await.as_deref(), Some("discovery-a"));

    first.shutdown().await;
    let handover = eventually_leads(&second, "the second replica takes over").await;
    assert!(
        handover <= LEASE_DURATION / 4 + Duration::from_millis(500),
        "a released lease is taken over within a retry period, not after it expires: {handover:?}"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("discovery-b"));
    assert_eq!(transitions(&client).await, 1);
    eprintln!("graceful hand-over: {handover:?}");
    second.shutdown().await;
    assert_eq!(
        holder(&client).await,
        None,
        "the last leader releases the lease as it stops"
    );
}

#[tokio::test]
async fn a_follower_writes_nothing_until_the_holder_stops_renewing() {
    let (_server, client, _dir) = cluster().await;
    let leases = Api::<Lease>::namespaced(client.clone(), "istio-system");
    let spec = |renewed: MicroTime| LeaseSpec {
        holder_identity: Some("another-replica".into()),
        lease_duration_seconds: Some(2),
        renew_time: Some(renewed),
        ..LeaseSpec::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec(MicroTime(k8s_openapi::jiff::Timestamp::now()))),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    // Another replica renews every 500 ms until told to stop.
    let (stop_renewing, mut renewing_stopped) = tokio::sync::watch::channel(false);
    let renewer = {
        let leases = leases.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = renewing_stopped.wait_for(|stop| *stop) => return,
                }
                let mut lease = leases.get(LEASE).await.unwrap();
                lease.spec = Some(spec(MicroTime(k8s_openapi::jiff::Timestamp::now())));
                leases
                    .replace(LEASE, &PostParams::default(), &lease)
                    .await
                    .unwrap();
            }
        })
    };

    let follower = replica(&client, "discovery-b").await;
    fixtures::namespace(&client, "fresh", json!({})).await;
    // Three lease durations: long enough for the writer to have acted had it been running.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!leads(&follower).await, "the lease is renewed by another");
        assert!(
            root_cert(&client, "fresh").await.is_none(),
            "a follower does not write istio-ca-root-cert"
        );
    }

    // The other replica dies without releasing (as under SIGKILL).
    stop_renewing.send(true).unwrap();
    renewer.await.unwrap();
    let stopped_at = Instant::now();
    eventually_leads(&follower, "the follower takes an expired lease over").await;
    let takeover = stopped_at.elapsed();
    assert!(
        takeover >= Duration::from_millis(1500),
        "the lease is not taken before it expires: {takeover:?}"
    );
    eventually("the new leader writes istio-ca-root-cert", WAIT, || async {
        root_cert(&client, "fresh").await.map(|_| ())
    })
    .await;
    assert_eq!(holder(&client).await.as_deref(), Some("discovery-b"));
    assert_eq!(transitions(&client).await, 1);
    eprintln!("take-over after the last renewal: {takeover:?}");
    follower.shutdown().await;
}

#[tokio::test]
async fn a_leader_that_dies_without_releasing_is_replaced_when_its_lease_expires() {
    let (_server, client, _dir) = cluster().await;
    let first = replica(&client, "discovery-a").await;
    eventually_leads(&first, "the first replica leads").await;
    let second = replica(&client, "discovery-b").await;
    tokio::time::sleep(LEASE_DURATION / 2).await;
    assert!(!leads(&second).await);

    // Dropping aborts every task: no release, as when the process is killed.
    drop(first);
    let takeover = eventually_leads(&second, "the second replica takes over").await;
    assert!(
        takeover <= LEASE_DURATION * 2,
        "taken over within a lease and a retry period: {takeover:?}"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("discovery-b"));
    // The new leader's writers run: a new namespace gets its ConfigMap.
    fixtures::namespace(&client, "after-takeover", json!({})).await;
    eventually("the new leader writes istio-ca-root-cert", WAIT, || async {
        root_cert(&client, "after-takeover").await.map(|_| ())
    })
    .await;
    eprintln!("take-over after the leader died: {takeover:?}");
    second.shutdown().await;
}
