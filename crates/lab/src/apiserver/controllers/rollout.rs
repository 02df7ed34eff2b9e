//! A Deployment's rollout decisions, as Kubernetes' deployment controller makes them, apart from
//! reading and writing objects so that they can be tested as tables: which ReplicaSet to create
//! or scale next (rolling update and recreate), and the status and conditions the Deployment
//! shows (`kubectl rollout status` and `kubectl wait --for condition=available` read them).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What the rollout needs to know of one of the Deployment's ReplicaSets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetView {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`, `readyReplicas`, `availableReplicas`.
    pub current: i32,
    pub ready: i32,
    pub available: i32,
    /// Creation time (seconds), to scale the oldest down first.
    pub created: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: i32,
        max_unavailable: i32,
    },
}

impl Strategy {
    /// `maxSurge` and `maxUnavailable` resolved against `replicas` (percentages: surge rounds
    /// up, unavailability down); both zero would never progress, so unavailability becomes one.
    pub fn rolling(
        max_surge: Option<&IntOrString>,
        max_unavailable: Option<&IntOrString>,
        replicas: i32,
    ) -> Self {
        let default = IntOrString::String("25%".to_owned());
        let surge = resolve(max_surge.unwrap_or(&default), replicas, true);
        let unavailable = resolve(max_unavailable.unwrap_or(&default), replicas, false);
        Strategy::RollingUpdate {
            max_surge: surge,
            max_unavailable: if surge == 0 && unavailable == 0 {
                1
            } else {
                unavailable
            },
        }
    }

    pub fn max_unavailable(self) -> i32 {
        match self {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable,
        }
    }

    pub fn max_surge(self) -> i32 {
        match self {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate { max_surge, .. } => max_surge,
        }
    }
}

fn resolve(value: &IntOrString, replicas: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(number) => *number,
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').trim().parse().unwrap_or(0);
            let scaled = i64::from(replicas) * percent;
            let resolved = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(resolved).unwrap_or(i32::MAX)
        }
    }
}

/// One change to make; the controller makes the first and looks again when it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the ReplicaSet for the current template with this many replicas.
    CreateNew { replicas: i32 },
    /// Set a ReplicaSet's `spec.replicas`.
    Scale { name: String, replicas: i32 },
}

/// The next steps towards `desired` pods of the current template. `new` is the ReplicaSet of the
/// current template, if it exists; `old` are the others; `old_pods` counts pods of the old ones
/// still running or stopping (Recreate waits for them to be gone).
pub fn plan(
    strategy: Strategy,
    desired: i32,
    new: Option<&ReplicaSetView>,
    old: &[ReplicaSetView],
    old_pods: usize,
) -> Vec<Step> {
    match strategy {
        Strategy::Recreate => plan_recreate(desired, new, old, old_pods),
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => plan_rolling(desired, max_surge, max_unavailable, new, old),
    }
}

fn plan_recreate(
    desired: i32,
    new: Option<&ReplicaSetView>,
    old: &[ReplicaSetView],
    old_pods: usize,
) -> Vec<Step> {
    let scale_down: Vec<Step> = old
        .iter()
        .filter(|set| set.replicas > 0)
        .map(|set| Step::Scale {
            name: set.name.clone(),
            replicas: 0,
        })
        .collect();
    if !scale_down.is_empty() {
        return scale_down;
    }
    if old_pods > 0 {
        return match new {
            None => vec![Step::CreateNew { replicas: 0 }],
            Some(_) => Vec::new(),
        };
    }
    match new {
        None => vec![Step::CreateNew { replicas: desired }],
        Some(set) if set.replicas != desired => vec![Step::Scale {
            name: set.name.clone(),
            replicas: desired,
        }],
        Some(_) => Vec::new(),
    }
}

fn plan_rolling(
    desired: i32,
    max_surge: i32,
    max_unavailable: i32,
    new: Option<&ReplicaSetView>,
    old: &[ReplicaSetView],
) -> Vec<Step> {
    let old_total: i32 = old.iter().map(|set| set.replicas).sum();
    let Some(new) = new else {
        // A new ReplicaSet starts with what the surge leaves room for.
        let room = (desired + max_surge - old_total).max(0);
        return vec![Step::CreateNew {
            replicas: room.min(desired),
        }];
    };
    // Scale the new ReplicaSet up as far as the surge allows (or down to the desired count).
    if new.replicas > desired {
        return vec![Step::Scale {
            name: new.name.clone(),
            replicas: desired,
        }];
    }
    if new.replicas < desired {
        let all = old_total + new.replicas;
        let max_total = desired + max_surge;
        if all < max_total {
            let up = (max_total - all).min(desired - new.replicas);
            return vec![Step::Scale {
                name: new.name.clone(),
                replicas: new.replicas + up,
            }];
        }
    }
    // Then scale old ones down as far as availability allows: unhealthy replicas first, then
    // available ones, oldest ReplicaSet first.
    if old_total == 0 {
        return Vec::new();
    }
    let all = old_total + new.replicas;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let mut budget = all - min_available - new_unavailable;
    if budget <= 0 {
        return Vec::new();
    }
    let mut oldest_first: Vec<&ReplicaSetView> = old.iter().collect();
    oldest_first.sort_by_key(|set| (set.created, set.name.clone()));
    let mut targets: Vec<(String, i32, i32)> = oldest_first
        .iter()
        .map(|set| (set.name.clone(), set.replicas, set.available))
        .collect();
    for (_, replicas, available) in &mut targets {
        if budget <= 0 {
            break;
        }
        let unhealthy = (*replicas - *available).max(0);
        let cut = unhealthy.min(budget);
        *replicas -= cut;
        budget -= cut;
    }
    let available_total: i32 = targets
        .iter()
        .map(|(_, _, available)| *available)
        .sum::<i32>()
        + new.available;
    let mut room = available_total - min_available;
    for (_, replicas, _) in &mut targets {
        if room <= 0 {
            break;
        }
        let cut = (*replicas).min(room);
        *replicas -= cut;
        room -= cut;
    }
    targets
        .into_iter()
        .zip(oldest_first)
        .filter(|((_, replicas, _), set)| *replicas != set.replicas)
        .map(|((name, replicas, _), _)| Step::Scale { name, replicas })
        .collect()
}

/// The counts a Deployment's status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub unavailable: i32,
}

pub fn counts(desired: i32, new: Option<&ReplicaSetView>, all: &[ReplicaSetView]) -> Counts {
    let replicas: i32 = all.iter().map(|set| set.current).sum();
    let available: i32 = all.iter().map(|set| set.available).sum();
    Counts {
        replicas,
        updated: new.map_or(0, |set| set.current),
        ready: all.iter().map(|set| set.ready).sum(),
        available,
        unavailable: (desired.max(replicas) - available).max(0),
    }
}

/// Whether the rollout is done: every replica updated and available, no old one left.
pub fn complete(desired: i32, counts: &Counts) -> bool {
    counts.updated == desired && counts.replicas == desired && counts.available == desired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, replicas: i32, available: i32, created: i64) -> ReplicaSetView {
        ReplicaSetView {
            name: name.into(),
            replicas,
            current: replicas,
            ready: available,
            available,
            created,
        }
    }

    fn scale(name: &str, replicas: i32) -> Step {
        Step::Scale {
            name: name.into(),
            replicas,
        }
    }

    #[test]
    fn rolling_parameters_resolve_like_kubernetes() {
        let percent = |text: &str| IntOrString::String(text.into());
        assert_eq!(
            Strategy::rolling(None, None, 4),
            Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 1
            }
        );
        assert_eq!(
            Strategy::rolling(None, None, 1),
            Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(
            Strategy::rolling(Some(&IntOrString::Int(0)), Some(&percent("10%")), 3),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 1
            }
        );
        assert_eq!(
            Strategy::rolling(Some(&percent("50%")), Some(&IntOrString::Int(2)), 3),
            Strategy::RollingUpdate {
                max_surge: 2,
                max_unavailable: 2
            }
        );
    }

    #[test]
    fn a_rolling_update_of_one_replica_surges_then_retires_the_old_set() {
        let strategy = Strategy::rolling(None, None, 1);
        let old = [set("v1", 1, 1, 10)];
        // A new template: its ReplicaSet starts with the one surge pod.
        assert_eq!(
            plan(strategy, 1, None, &old, 1),
            [Step::CreateNew { replicas: 1 }]
        );
        // While the new pod is not available, the old one stays.
        let new = set("v2", 1, 0, 20);
        assert!(plan(strategy, 1, Some(&new), &old, 1).is_empty());
        // Once it is, the old set goes to zero.
        let new = set("v2", 1, 1, 20);
        assert_eq!(plan(strategy, 1, Some(&new), &old, 1), [scale("v1", 0)]);
        assert!(plan(strategy, 1, Some(&new), &[set("v1", 0, 0, 10)], 0).is_empty());
    }

    #[test]
    fn scaling_moves_only_the_current_set() {
        let strategy = Strategy::rolling(None, None, 3);
        let current = set("v1", 1, 1, 10);
        assert_eq!(plan(strategy, 3, Some(&current), &[], 0), [scale("v1", 3)]);
        let current = set("v1", 3, 3, 10);
        assert_eq!(plan(strategy, 1, Some(&current), &[], 0), [scale("v1", 1)]);
        assert!(plan(strategy, 3, Some(&current), &[], 0).is_empty());
    }

    #[test]
    fn unhealthy_old_replicas_go_first_and_availability_is_kept() {
        let strategy = Strategy::rolling(Some(&IntOrString::Int(1)), Some(&IntOrString::Int(1)), 4);
        // Four old replicas, one of them unavailable; the new set has one available pod.
        let old = [set("v1", 4, 3, 10)];
        let new = set("v2", 1, 1, 20);
        // all = 5, min available = 3, budget = 5 - 3 - 0 = 2: the unhealthy one, then one more.
        assert_eq!(plan(strategy, 4, Some(&new), &old, 4), [scale("v1", 2)]);
    }

    #[test]
    fn recreate_empties_the_old_sets_and_waits_for_their_pods() {
        let old = [set("v1", 2, 2, 10)];
        assert_eq!(plan(Strategy::Recreate, 2, None, &old, 2), [scale("v1", 0)]);
        let old = [set("v1", 0, 0, 10)];
        assert_eq!(
            plan(Strategy::Recreate, 2, None, &old, 1),
            [Step::CreateNew { replicas: 0 }]
        );
        let new = set("v2", 0, 0, 20);
        assert!(plan(Strategy::Recreate, 2, Some(&new), &old, 1).is_empty());
        assert_eq!(
            plan(Strategy::Recreate, 2, Some(&new), &old, 0),
            [scale("v2", 2)]
        );
    }

    #[test]
    fn counts_and_completion() {
        let new = set("v2", 1, 1, 20);
        let old = set("v1", 0, 0, 10);
        let all = [old.clone(), new.clone()];
        let counts = counts(1, Some(&new), &all);
        assert_eq!(
            counts,
            Counts {
                replicas: 1,
                updated: 1,
                ready: 1,
                available: 1,
                unavailable: 0
            }
        );
        assert!(complete(1, &counts));
        let during = [set("v1", 1, 1, 10), set("v2", 1, 0, 20)];
        let counts = super::counts(1, Some(&during[1]), &during);
        assert_eq!(counts.replicas, 2);
        assert!(!complete(1, &counts));
    }
}
