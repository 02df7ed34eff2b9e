//! One leader among discovery's replicas, elected on a `coordination.k8s.io/v1` Lease in the
//! system namespace, with client-go's rules as istiod uses them: a 30 s lease, renewed every
//! quarter of it; a holder that has not renewed for half of it steps down before anyone may take
//! over; a candidate takes an expired lease over. Expiry is judged by when this replica last saw
//! the Lease change, not by the times written in it, so clock skew between replicas does not
//! matter. On a graceful stop the leader releases the lease, so that another replica takes over
//! within one retry period instead of a whole lease.
//!
//! Every replica serves xDS, the CA and the injection webhook; only the leader writes cluster
//! state (root-certificate ConfigMaps, webhook `caBundle`s), through [`while_leading`].

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a graceful stop waits for the lease's release: well within discovery's shutdown grace,
/// which would otherwise abort it with the other tasks (and the lease would then have to expire).
pub(crate) const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Istio's election for its namespace controller, the writer of `istio-ca-root-cert`. One lease
/// per revision, as each revision keeps its own webhooks.
const ELECTION_NAME: &str = "istio-namespace-controller-election";
/// How long writers of a lost term get to stop before they are aborted.
const WRITER_STOP_GRACE: Duration = Duration::from_secs(1);

/// The lease's name for `revision`: Istio's name, suffixed for a revision other than `default`.
pub fn lease_name(revision: &str) -> String {
    if revision.is_empty() || revision == "default" {
        ELECTION_NAME.to_owned()
    } else {
        format!("{ELECTION_NAME}-{revision}")
    }
}

#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in `holderIdentity`: the pod's name where there is one.
    pub identity: String,
    /// How long a lease holds without renewal (istiod: 30 s).
    pub lease_duration: Duration,
}

/// What a candidate does next with the Lease as it read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// Nobody holds it, or its holder let it expire: take it over.
    TakeOver,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and renews it.
    Follow,
}

/// The decision, apart from I/O: `unchanged_for` is how long this replica has seen the Lease's
/// spec stay as it is.
fn next_step(
    lease: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|seconds| *seconds > 0)
        .map_or(default_duration, |seconds| {
            Duration::from_secs(seconds.unsigned_abs().into())
        });
    if unchanged_for >= duration {
        Step::TakeOver
    } else {
        Step::Follow
    }
}

/// How a round ended.
#[derive(Debug)]
enum Round {
    /// This replica holds the lease now.
    Holds,
    /// Another replica holds it and renews it.
    Follows,
    /// Another replica wrote it between our read and our write.
    Contended,
}

/// When the Lease's spec was last seen to change.
#[derive(Default)]
struct Observed {
    spec: Option<LeaseSpec>,
    since: Option<Instant>,
}

impl Observed {
    fn unchanged_for(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> Duration {
        if self.since.is_none() || self.spec.as_ref() != spec {
            self.spec = spec.cloned();
            self.since = Some(now);
        }
        now - self.since.unwrap_or(now)
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Election {
    fn retry_period(&self) -> Duration {
        self.lease_duration / 4
    }

    fn renew_deadline(&self) -> Duration {
        self.lease_duration / 2
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn held_spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = now_micro();
        let transitions = previous
            .and_then(|spec| spec.lease_transitions)
            .unwrap_or(0);
        let was_ours = previous
            .and_then(|spec| spec.holder_identity.as_deref())
            .is_some_and(|holder| holder == self.identity);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if was_ours {
                previous.and_then(|spec| spec.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if was_ours || previous.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..LeaseSpec::default()
        }
    }

    /// One round: reads the Lease and creates, takes over or renews it.
    async fn attempt(&self, api: &Api<Lease>, observed: &mut Observed) -> kube::Result<Round> {
        let current = api.get_opt(&self.lease_name).await?;
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let unchanged_for = observed.unchanged_for(spec, Instant::now());
        let step = next_step(spec, &self.identity, unchanged_for, self.lease_duration);
        let written = match step {
            Step::Follow => return Ok(Round::Follows),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held_spec(None)),
                };
                api.create(&PostParams::default(), &lease).await
            }
            Step::TakeOver | Step::Renew => {
                let mut lease = current.clone().unwrap_or_default();
                lease.spec = Some(self.held_spec(spec));
                // The read's resourceVersion stays: a replica that wrote meanwhile wins.
                api.replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                observed.unchanged_for(lease.spec.as_ref(), Instant::now());
                if step == Step::TakeOver {
                    tracing::info!(lease = %self.lease_name, previous = ?spec.and_then(|spec| spec.holder_identity.as_deref()), "took the leader lease over");
                }
                Ok(Round::Holds)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Contended),
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up if this replica holds it, so that another takes over at once.
    async fn release(&self, api: &Api<Lease>) -> kube::Result<()> {
        let Some(mut lease) = api.get_opt(&self.lease_name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Campaigns and keeps leadership until `stopped` turns true, then releases it. `leading`
    /// tells whether this replica leads now.
    pub async fn run(
        self,
        client: kube::Client,
        leading: watch::Sender<bool>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let api = Api::<Lease>::namespaced(client, &self.namespace);
        let mut observed = Observed::default();
        let mut last_renewal: Option<Instant> = None;
        let mut last_error = String::new();
        loop {
            let round =
                tokio::time::timeout(self.retry_period(), self.attempt(&api, &mut observed))
                    .await
                    .unwrap_or_else(|_| {
                        Err(kube::Error::Service(
                            "no answer within the retry period".into(),
                        ))
                    });
            let now = Instant::now();
            let within_deadline =
                last_renewal.is_some_and(|renewed| now - renewed < self.renew_deadline());
            if round.is_ok() {
                last_error.clear();
            }
            let holds = match round {
                Ok(Round::Holds) => {
                    last_renewal = Some(now);
                    true
                }
                Ok(Round::Follows) => false,
                // A leader whose write lost a race, or that cannot reach the API server, keeps
                // leading until its renew deadline, as client-go's does: a blip does not stop
                // the writers, and nobody else may take over before the lease expires.
                Ok(Round::Contended) => *leading.borrow() && within_deadline,
                Err(error) => {
                    let error = error.to_string();
                    if error != last_error {
                        tracing::warn!(lease = %self.lease_name, %error, "cannot read or write the leader lease; retrying");
                        last_error = error;
                    }
                    *leading.borrow() && within_deadline
                }
            };
            leading.send_if_modified(|was| {
                if *was == holds {
                    return false;
                }
                if holds {
                    tracing::info!(lease = %self.lease_name, identity = %self.identity, "leader election lock obtained");
                } else {
                    tracing::info!(lease = %self.lease_name, identity = %self.identity, "leader election lock lost");
                }
                *was = holds;
                true
            });
            tokio::select! {
                () = tokio::time::sleep(self.retry_period()) => {}
                _ = stopped.wait_for(|stop| *stop) => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            let released =
                tokio::time::timeout(self.retry_period().min(RELEASE_TIMEOUT), self.release(&api))
                    .await;
            if !matches!(released, Ok(Ok(()))) {
                tracing::warn!(lease = %self.lease_name, "could not release the leader lease; another replica takes over when it expires");
            }
        }
    }
}

/// Runs `writer` for as long as `leading` is true: started on every win, told to stop on every
/// loss (and aborted if it has not after a second), so that two terms never overlap. Returns
/// when `stopped` turns true, after the writer of the current term has stopped.
pub async fn while_leading<Writer, Work>(
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
    writer: Writer,
) where
    Writer: Fn(watch::Receiver<bool>) -> Work,
    Work: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            won = leading.wait_for(|leads| *leads) => if won.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let (stop_term, term_stopped) = watch::channel(false);
        let mut term = tokio::spawn(writer(term_stopped));
        let end = tokio::select! {
            _ = leading.wait_for(|leads| !*leads) => TermEnd::Lost,
            _ = stopped.wait_for(|stop| *stop) => TermEnd::Stopped,
            _ = &mut term => TermEnd::WriterEnded,
        };
        if end == TermEnd::WriterEnded {
            // A writer that ends on its own is done for this term.
            tokio::select! {
                _ = leading.wait_for(|leads| !*leads) => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
        let _ = stop_term.send(true);
        if tokio::time::timeout(WRITER_STOP_GRACE, &mut term)
            .await
            .is_err()
        {
            term.abort();
        }
        if end == TermEnd::Stopped {
            return;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TermEnd {
    Lost,
    Stopped,
    WriterEnded,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn next_step_follows_client_gos_rules() {
        let default = Duration::from_secs(30);
        let cases = [
            ("no lease", None, 0, Step::Create),
            ("ours", Some(held_by(Some("me"), Some(30))), 0, Step::Renew),
            (
                "ours, even when stale",
                Some(held_by(Some("me"), Some(30))),
                99,
                Step::Renew,
            ),
            (
                "released (no holder)",
                Some(held_by(None, Some(1))),
                0,
                Step::TakeOver,
            ),
            (
                "released (empty holder)",
                Some(held_by(Some(""), Some(30))),
                0,
                Step::TakeOver,
            ),
            (
                "another's, renewed",
                Some(held_by(Some("other"), Some(30))),
                29,
                Step::Follow,
            ),
            (
                "another's, expired",
                Some(held_by(Some("other"), Some(30))),
                30,
                Step::TakeOver,
            ),
            (
                "another's, its own short duration",
                Some(held_by(Some("other"), Some(5))),
                5,
                Step::TakeOver,
            ),
            (
                "another's, no duration: ours applies",
                Some(held_by(Some("other"), None)),
                29,
                Step::Follow,
            ),
            (
                "another's, a negative duration: ours applies",
                Some(held_by(Some("other"), Some(-1))),
                30,
                Step::TakeOver,
            ),
        ];
        for (name, lease, unchanged_secs, expected) in cases {
            let step = next_step(
                lease.as_ref(),
                "me",
                Duration::from_secs(unchanged_secs),
                default,
            );
            assert_eq!(step, expected, "{name}");
        }
    }

    #[test]
    fn expiry_is_measured_from_the_last_change_seen_here() {
        let start = Instant::now();
        let mut observed = Observed::default();
        let first = held_by(Some("other"), Some(30));
        assert_eq!(observed.unchanged_for(Some(&first), start), Duration::ZERO);
        let later = start + Duration::from_secs(10);
        assert_eq!(
            observed.unchanged_for(Some(&first), later),
            Duration::from_secs(10)
        );
        let mut renewed = first.clone();
        renewed.renew_time = Some(now_micro());
        assert_eq!(
            observed.unchanged_for(Some(&renewed), later),
            Duration::ZERO,
            "a renewal restarts the clock"
        );
        assert_eq!(
            observed.unchanged_for(None, later + Duration::from_secs(1)),
            Duration::ZERO,
            "a deleted lease is a change too"
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let election = Election {
            namespace: "istio-system".into(),
            lease_name: lease_name("default"),
            identity: "me".into(),
            lease_duration: Duration::from_secs(30),
        };
        let created = election.held_spec(None);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(30));
        let renewed = election.held_spec(Some(&created));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, created.acquire_time);
        let mut others = held_by(Some("other"), Some(30));
        others.lease_transitions = Some(4);
        let taken = election.held_spec(Some(&others));
        assert_eq!(taken.lease_transitions, Some(5));
        assert!(taken.acquire_time.is_some());
    }

    #[test]
    fn lease_names_follow_istios_per_revision() {
        assert_eq!(lease_name("default"), "istio-namespace-controller-election");
        assert_eq!(lease_name(""), "istio-namespace-controller-election");
        assert_eq!(
            lease_name("canary"),
            "istio-namespace-controller-election-canary"
        );
    }
}
