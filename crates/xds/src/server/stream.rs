//! One ADS stream: subscriptions per type, what was sent (name and version), nonces, ACKs and
//! NACKs, in either protocol variant.
//!
//! - A request whose nonce is not the latest one sent for its type is stale and ignored.
//! - A NACK is recorded (debug output, metrics, log) and never answered by resending: the next
//!   change brings the next response, so a rejected config cannot loop.
//! - State of the world: LDS and CDS responses carry every resource; EDS and RDS responses carry
//!   only resources that changed or were newly asked for (as the protocol allows).
//! - Delta: only changed resources, and the names of removed ones.

use super::interner::{Interner, Name};
pub(crate) use super::request::Requests;
use super::request::{Incoming, NameChange};
use super::sent_versions::SharedTables;
use super::subscription::Subscription;
use super::wire::{EncodedResponse, Outgoing};
use super::{ConnectionStatus, Shared};
use crate::generate::Wanted;
use crate::proxy::ProxyInfo;
use crate::resources::{self, CLUSTER, ENDPOINT, PUSH_ORDER, Resource, wildcard_by_default};
use causeway_model::{MeshSnapshot, Push};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// Most resources in one delta response.
const MAX_RESOURCES_PER_RESPONSE: usize = 100;

/// Where a stream's responses go: the HTTP/2 response body (see `wire`).
pub(crate) struct Responses {
    sender: mpsc::Sender<Outgoing>,
    delta: bool,
}

/// The client went away: nothing more to do on this stream.
struct Gone;

impl Responses {
    pub(crate) fn new(sender: mpsc::Sender<Outgoing>, delta: bool) -> Responses {
        Responses { sender, delta }
    }

    fn is_delta(&self) -> bool {
        self.delta
    }

    async fn send(&self, response: EncodedResponse) -> Result<(), Gone> {
        self.sender.send(Ok(response)).await.map_err(|_| Gone)
    }

    async fn error(&self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }
}

/// Which resources count as changed whatever their version.
enum Force<'a> {
    Nothing,
    Everything,
    Names(&'a BTreeSet<Name>),
}

impl Force<'_> {
    fn covers(&self, name: &str) -> bool {
        match self {
            Force::Nothing => false,
            Force::Everything => true,
            Force::Names(names) => names.contains(name),
        }
    }
}

struct Stream {
    shared: Arc<Shared>,
    status: Arc<ConnectionStatus>,
    proxy: ProxyInfo,
    responses: Responses,
    snapshot: Arc<MeshSnapshot>,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
}

pub(crate) async fn serve(shared: Arc<Shared>, mut requests: Requests, responses: Responses) {
    let first = match requests.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => {
            tracing::debug!(%status, "xDS stream failed before its first request");
            return;
        }
        None => return,
    };
    let Some(node) = first.node.clone() else {
        responses
            .error(Status::invalid_argument(
                "the first request of an xDS stream must carry `node` (its id and metadata); set it in the client's bootstrap",
            ))
            .await;
        return;
    };
    let proxy = ProxyInfo::from_node(&node, &shared.default_cluster);
    let (number, status) = shared.register(proxy.clone(), responses.is_delta());
    tracing::info!(proxy = %proxy.id, kind = proxy.kind.as_str(), cluster = %proxy.cluster, delta = responses.is_delta(), "xDS stream connected");
    // Subscribe before reading the snapshot: a push in between is then seen twice, never missed.
    let pushes = shared.pushes.subscribe();
    let snapshot = shared.snapshots.borrow().clone();
    let mut stream = Stream {
        shared: shared.clone(),
        status,
        proxy,
        responses,
        snapshot,
        subscriptions: BTreeMap::new(),
        nonce: 0,
    };
    let _ = stream.run(first, requests, pushes).await;
    shared.unregister(number);
    // Its receiver is gone: the pushes it had not received no longer hold reads back.
    shared.after_receive();
    tracing::info!(proxy = %stream.proxy.id, "xDS stream closed");
}

impl Stream {
    async fn run(
        &mut self,
        first: Incoming,
        mut requests: Requests,
        mut pushes: broadcast::Receiver<Arc<Push>>,
    ) -> Result<(), Gone> {
        self.on_request(first).await?;
        let closed = until_closing(self.shared.closing.subscribe());
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return Ok(()),
                request = requests.next() => match request {
                    Some(Ok(request)) => self.on_request(request).await?,
                    Some(Err(status)) => {
                        tracing::debug!(proxy = %self.proxy.id, %status, "xDS stream ended with an error");
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                push = pushes.recv() => match push {
                    Ok(push) => {
                        self.shared.after_receive();
                        self.on_push(&push).await?
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.shared.after_receive();
                        tracing::warn!(proxy = %self.proxy.id, missed, "stream fell behind the pushes; sending a full push");
                        let snapshot = self.shared.snapshots.borrow().clone();
                        self.full_push(snapshot, None).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn on_request(&mut self, request: Incoming) -> Result<(), Gone> {
        let type_url = request.type_url.clone();
        if type_url.is_empty() {
            self.responses
                .error(Status::invalid_argument(
                    "an ADS request must set `type_url`",
                ))
                .await;
            return Err(Gone);
        }
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if subscription.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                // Stale: answers an older response. The newer response is on its way.
                return Ok(());
            }
            if let Some(error) = request.error {
                tracing::warn!(proxy = %self.proxy.id, r#type = resources::short_name(&type_url), %error, "proxy rejected the configuration (NACK)");
                self.shared
                    .metrics
                    .rejects
                    .get_or_create(&super::metrics::TypeLabel::of(&type_url))
                    .inc();
                self.status
                    .update(&type_url, |status| status.rejected = Some(error));
                return Ok(());
            }
            let nonce = request.response_nonce.clone();
            self.status.update(&type_url, |status| {
                status.acked_nonce = Some(nonce);
                status.acked_version = status.sent_version.clone();
                status.rejected = None;
            });
        }
        let added = match apply_names(
            subscription,
            &self.shared.interner,
            &self.shared.sent_tables,
            &type_url,
            request.names,
        ) {
            Ok(added) => added,
            Err(status) => {
                self.responses.error(status).await;
                return Err(Gone);
            }
        };
        let first = !subscription.answered;
        let force = if first {
            Force::Everything
        } else {
            Force::Names(&added)
        };
        if first || !added.is_empty() {
            self.respond(&type_url, None, force).await?;
        }
        Ok(())
    }

    async fn on_push(&mut self, push: &Push) -> Result<(), Gone> {
        if push.full {
            return self.full_push(push.snapshot.clone(), Some(push)).await;
        }
        let before = std::mem::replace(&mut self.snapshot, push.snapshot.clone());
        let Some(subscription) = self.subscriptions.get(ENDPOINT) else {
            return Ok(());
        };
        let touched = if push.all_endpoints {
            subscription.names.clone()
        } else {
            Arc::new(subscription.names_of_services(
                &push.changed_endpoints,
                &before,
                &self.snapshot,
            ))
        };
        if touched.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        if self
            .respond(ENDPOINT, Some(&touched), Force::Nothing)
            .await?
            .is_some()
        {
            self.observe(ENDPOINT, started, Some(push.first_change));
        }
        Ok(())
    }

    /// Everything may have changed (`push` is `None` when this stream missed pushes). Clusters
    /// that did change are re-warmed by Envoy, which waits for their endpoints: those are sent
    /// even when the endpoints themselves did not change. Other endpoint assignments are only
    /// looked at when the push says their service or endpoints changed.
    async fn full_push(
        &mut self,
        snapshot: Arc<MeshSnapshot>,
        push: Option<&Push>,
    ) -> Result<(), Gone> {
        let before = std::mem::replace(&mut self.snapshot, snapshot);
        let first_change = push.map(|push| push.first_change);
        let mut changed_clusters = BTreeSet::new();
        for type_url in PUSH_ORDER {
            if !self.subscriptions.contains_key(type_url) {
                continue;
            }
            let started = Instant::now();
            let changed = if type_url == ENDPOINT {
                let candidates = self.endpoint_candidates(push, &changed_clusters, &before);
                self.respond(
                    type_url,
                    candidates.as_ref(),
                    Force::Names(&changed_clusters),
                )
                .await?
            } else {
                self.respond(type_url, None, Force::Nothing).await?
            };
            let Some(changed) = changed else {
                continue;
            };
            if type_url == CLUSTER {
                changed_clusters = changed.into_iter().collect();
            }
            self.observe(type_url, started, first_change);
        }
        Ok(())
    }

    /// The subscribed endpoint assignments a full push must look at: those of re-sent clusters
    /// and of services whose definition or endpoints changed. `None`: all of them.
    fn endpoint_candidates(
        &self,
        push: Option<&Push>,
        changed_clusters: &BTreeSet<Name>,
        before: &MeshSnapshot,
    ) -> Option<BTreeSet<Name>> {
        let push = push.filter(|push| !push.all_endpoints)?;
        let subscription = self.subscriptions.get(ENDPOINT)?;
        let mut candidates = subscription.names_of_services(
            push.changed_services.iter().chain(&push.changed_endpoints),
            before,
            &self.snapshot,
        );
        candidates.extend(
            changed_clusters
                .iter()
                .filter(|name| subscription.names.contains(*name))
                .cloned(),
        );
        Some(candidates)
    }

    fn observe(&self, type_url: &str, started: Instant, first_change: Option<Instant>) {
        let metrics = &self.shared.metrics;
        metrics.observe_push_time(type_url, started.elapsed().as_secs_f64());
        if let Some(first_change) = first_change {
            metrics
                .convergence
                .observe(first_change.elapsed().as_secs_f64());
        }
    }

    /// Generates `type_url` (only `only` when given) and sends what the client lacks. Returns,
    /// when a response was sent, the names of the resources that were new or changed in it.
    async fn respond(
        &mut self,
        type_url: &str,
        only: Option<&BTreeSet<Name>>,
        force: Force<'_>,
    ) -> Result<Option<Vec<Name>>, Gone> {
        let Some(subscription) = self.subscriptions.get(type_url) else {
            return Ok(None);
        };
        let wanted = match (only, subscription.wildcard) {
            (Some(names), _) => Wanted::Named(names),
            (None, true) => Wanted::All,
            (None, false) => Wanted::Named(&subscription.names),
        };
        if matches!(wanted, Wanted::Named(names) if names.is_empty())
            && !matches!(force, Force::Everything)
        {
            return Ok(None);
        }
        let generated =
            self.shared
                .generator
                .generate(type_url, &self.snapshot, &self.proxy, wanted);
        let delta = self.responses.is_delta();
        let subscription = self.subscriptions.get_mut(type_url).expect("checked above");
        let changed: Vec<&Arc<Resource>> = generated
            .iter()
            .filter(|r| force.covers(&r.name) || subscription.sent.get(&r.name) != Some(r.version))
            .collect();
        let present: HashSet<&str> = generated.iter().map(|r| &*r.name).collect();
        // Names sent before that no longer exist (within what was asked for).
        let removed: Vec<Name> = match only {
            Some(only) => only
                .iter()
                .filter(|name| !present.contains(&***name) && subscription.sent.contains(name))
                .cloned()
                .collect(),
            None => subscription
                .sent
                .iter()
                .filter(|(name, _)| !present.contains(&***name))
                .map(|(name, _)| name.clone())
                .collect(),
        };
        let full_state = !delta && wildcard_by_default(type_url);
        let must_answer = matches!(force, Force::Everything);
        if changed.is_empty() && removed.is_empty() && !must_answer {
            return Ok(None);
        }
        if !delta && !full_state && changed.is_empty() && !must_answer {
            // SotW EDS/RDS: a removed resource is simply no longer named by the client.
            return Ok(None);
        }
        let version = self.snapshot.version.to_string();
        let changed_names: Vec<Name> = changed.iter().map(|r| r.name.clone()).collect();
        let to_send: Vec<&Arc<Resource>> = if full_state {
            generated.iter().collect()
        } else {
            changed
        };
        subscription.sent.insert_all(
            to_send
                .iter()
                .map(|resource| (resource.name.clone(), resource.version)),
            &self.shared.sent_tables,
        );
        for name in &removed {
            subscription.sent.remove(name);
        }
        subscription.answered = true;
        let count = to_send.len();
        // Delta responses come in parts, which keeps every response (and the buffers that carry it)
        // small. State-of-the-world responses stay whole: a SotW client repeats every name it
        // wants in every ACK, and with parts the ACKs of a thousand EDS names outran the HTTP/2
        // windows and stalled streams in the benchmark (see the issue notes).
        let batches: Vec<&[&Arc<Resource>]> = if !delta || to_send.is_empty() {
            vec![&to_send[..]]
        } else {
            to_send.chunks(MAX_RESOURCES_PER_RESPONSE).collect()
        };
        let last_batch = batches.len() - 1;
        let mut removed = Some(removed);
        let mut nonce = String::new();
        for (index, batch) in batches.into_iter().enumerate() {
            self.nonce += 1;
            nonce = self.nonce.to_string();
            self.subscriptions
                .get_mut(type_url)
                .expect("checked above")
                .nonce = Some(nonce.clone());
            let response = if delta {
                let removed = if index == last_batch {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                };
                EncodedResponse::delta(version.clone(), type_url, nonce.clone(), batch, &removed)
            } else {
                EncodedResponse::sotw(version.clone(), type_url, nonce.clone(), batch)
            };
            self.responses.send(response).await?;
            self.shared.metrics.count_push(type_url);
        }
        self.status.update(type_url, |status| {
            status.sent_nonce = Some(nonce);
            status.sent_version = Some(version);
            status.resources = count;
        });
        Ok(Some(changed_names))
    }
}

async fn until_closing(mut closing: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *closing.borrow_and_update() {
            return;
        }
        if closing.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Applies a request's names to the subscription; returns the names newly asked for.
fn apply_names(
    subscription: &mut Subscription,
    interner: &Interner,
    sent_tables: &SharedTables,
    type_url: &str,
    change: NameChange,
) -> Result<BTreeSet<Name>, Status> {
    let intern = |names: &BTreeSet<Name>, name: &str| {
        names
            .get(name)
            .cloned()
            .unwrap_or_else(|| interner.intern(name))
    };
    let mut added = BTreeSet::new();
    let mut names_changed = false;
    match change {
        NameChange::Replace(names) => {
            if subscription.answered && subscription.last_names_hash == Some(names.hash) {
                return Ok(added);
            }
            subscription.last_names_hash = Some(names.hash);
            subscription.wildcard =
                (names.count == 0 && wildcard_by_default(type_url)) || names.has_wildcard;
            let listed = names.read()?;
            let old = &subscription.names;
            let mut new = BTreeSet::new();
            for name in listed.into_iter().filter(|n| *n != "*") {
                let name = intern(old, name);
                if !old.contains(&name) {
                    added.insert(name.clone());
                }
                new.insert(name);
            }
            names_changed = new != **old;
            if names_changed {
                subscription.names = interner.share(new);
            }
            if !subscription.wildcard {
                let kept = &subscription.names;
                subscription.sent.retain(|name| kept.contains(name));
            }
        }
        NameChange::Update {
            subscribe,
            unsubscribe,
            initial_versions,
        } => {
            if !subscription.answered && subscribe.is_empty() && wildcard_by_default(type_url) {
                subscription.wildcard = true;
            }
            // An ACK names nothing: the shared set is only copied when the list changes.
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                let mut names = (*subscription.names).clone();
                for name in subscribe {
                    if name == "*" {
                        subscription.wildcard = true;
                    } else {
                        let name = intern(&names, &name);
                        if names.insert(name.clone()) {
                            names_changed = true;
                            added.insert(name);
                        }
                    }
                }
                for name in unsubscribe {
                    if name == "*" {
                        subscription.wildcard = false;
                    } else {
                        names_changed |= names.remove(name.as_str());
                        subscription.sent.remove(&name);
                        added.remove(name.as_str());
                    }
                }
                if names_changed {
                    subscription.names = interner.share(names);
                }
            }
            // What a reconnecting client already holds need not be sent again.
            subscription.sent.insert_all(
                initial_versions.into_iter().filter_map(|(name, version)| {
                    let version = u64::from_str_radix(&version, 16).ok()?;
                    Some((intern(&subscription.names, &name), version))
                }),
                sent_tables,
            );
        }
    }
    if names_changed {
        subscription.reindex();
    }
    Ok(added)
}
