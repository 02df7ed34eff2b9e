//! `causeway lab memory`: what the lab's mesh costs in memory, by role (API servers, discovery,
//! gateways, sidecars, apps), summed over every process each running cluster started. PSS counts
//! pages shared between processes (the one causeway binary's code) once, split among them; RSS
//! counts them in every process.

use std::collections::{BTreeMap, HashMap};

use causeway_lab::clusters::{ClusterStatus, Lab};

/// What a process of the lab does, from its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ApiServer,
    Discovery,
    Gateway,
    Sidecar,
    Operator,
    App,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::ApiServer => "API servers (with kubelet, kube-proxy, DNS)",
            Role::Discovery => "discovery (istiod)",
            Role::Gateway => "gateways (east-west, ingress)",
            Role::Sidecar => "sidecars",
            Role::Operator => "operator",
            Role::App => "apps (helloworld, sleep, httpbin)",
        }
    }

    /// The role of a process with these arguments (`argv`, NUL-separated in /proc).
    pub fn of(arguments: &[&str]) -> Role {
        let words: Vec<&str> = arguments.iter().skip(1).copied().collect();
        match words.as_slice() {
            ["lab", "serve-cluster", ..] => Role::ApiServer,
            ["discovery", ..] => Role::Discovery,
            ["proxy", "router", ..] => Role::Gateway,
            ["proxy", "sidecar", ..] => Role::Sidecar,
            ["operator", ..] => Role::Operator,
            _ => Role::App,
        }
    }
}

/// kB of memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub processes: usize,
    pub pss_kb: u64,
    pub rss_kb: u64,
}

fn field_kb(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Every process's parent, from /proc.
fn parents() -> HashMap<u32, u32> {
    let mut parents = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so read after its closing paren.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// The roots and all their descendants.
fn with_descendants(roots: &[u32], parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, parent) in parents {
        children.entry(*parent).or_default().push(*pid);
    }
    let mut all = roots.to_vec();
    let mut next = 0;
    while next < all.len() {
        if let Some(kids) = children.get(&all[next]) {
            all.extend(kids);
        }
        next += 1;
    }
    all
}

/// Memory by role of the running clusters' process trees.
pub fn measure(lab: &Lab) -> anyhow::Result<BTreeMap<Role, Usage>> {
    let roots: Vec<u32> = lab
        .clusters()?
        .iter()
        .filter_map(|record| match lab.status(&record.name) {
            ClusterStatus::Running(endpoint) => Some(endpoint.pid),
            ClusterStatus::Stopped => None,
        })
        .collect();
    let mut usage: BTreeMap<Role, Usage> = BTreeMap::new();
    for pid in with_descendants(&roots, &parents()) {
        let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&command_line);
        let arguments: Vec<&str> = text.split('\0').filter(|word| !word.is_empty()).collect();
        let entry = usage.entry(Role::of(&arguments)).or_default();
        entry.processes += 1;
        entry.pss_kb += field_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        entry.rss_kb += field_kb(&format!("/proc/{pid}/status"), "VmRSS:");
    }
    Ok(usage)
}

fn megabytes(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The table: one row per role, then the total.
pub fn render(usage: &BTreeMap<Role, Usage>) -> String {
    let mut rows: Vec<Vec<String>> = usage
        .iter()
        .map(|(role, usage)| {
            vec![
                role.label().to_owned(),
                usage.processes.to_string(),
                megabytes(usage.pss_kb),
                megabytes(usage.rss_kb),
            ]
        })
        .collect();
    let total = usage.values().fold(Usage::default(), |sum, usage| Usage {
        processes: sum.processes + usage.processes,
        pss_kb: sum.pss_kb + usage.pss_kb,
        rss_kb: sum.rss_kb + usage.rss_kb,
    });
    rows.push(vec![
        "whole lab".to_owned(),
        total.processes.to_string(),
        megabytes(total.pss_kb),
        megabytes(total.rss_kb),
    ]);
    // Numbers right-aligned, as kubectl top prints them.
    crate::table::table(
        &["ROLE", "PROCESSES", "PSS MB", "RSS MB"],
        &rows,
        &[1, 2, 3],
    )
}

pub fn run(lab: &Lab) -> anyhow::Result<()> {
    let usage = measure(lab)?;
    if usage.is_empty() {
        anyhow::bail!(
            "no running lab clusters under {}; is CAUSEWAY_LAB_DIR right?",
            lab.root().display()
        );
    }
    print!("{}", render(&usage));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_told_apart_by_their_arguments() {
        let cases: [(&[&str], Role); 7] = [
            (
                &[
                    "causeway",
                    "lab",
                    "serve-cluster",
                    "--state-dir",
                    "/s",
                    "c1",
                ],
                Role::ApiServer,
            ),
            (&["/bin/causeway", "discovery"], Role::Discovery),
            (&["causeway", "proxy", "router"], Role::Gateway),
            (
                &["causeway", "proxy", "sidecar", "--concurrency", "2"],
                Role::Sidecar,
            ),
            (&["causeway", "operator"], Role::Operator),
            (&["causeway", "lab", "app", "helloworld"], Role::App),
            (&["sleep", "3650d"], Role::App),
        ];
        for (arguments, role) in cases {
            assert_eq!(Role::of(arguments), role, "{arguments:?}");
        }
    }

    #[test]
    fn the_tree_below_each_root_is_found() {
        let parents = HashMap::from([(10, 1), (11, 10), (12, 11), (20, 1), (21, 20), (30, 2)]);
        let mut found = with_descendants(&[10, 20], &parents);
        found.sort_unstable();
        assert_eq!(found, [10, 11, 12, 20, 21]);
    }

    #[test]
    fn the_table_totals_every_role() {
        let usage = BTreeMap::from([
            (
                Role::Discovery,
                Usage {
                    processes: 2,
                    pss_kb: 2048,
                    rss_kb: 4096,
                },
            ),
            (
                Role::Sidecar,
                Usage {
                    processes: 4,
                    pss_kb: 1024,
                    rss_kb: 8192,
                },
            ),
        ]);
        assert_eq!(
            render(&usage).lines().collect::<Vec<_>>(),
            [
                "ROLE                PROCESSES  PSS MB  RSS MB",
                "discovery (istiod)          2     2.0     4.0",
                "sidecars                    4     1.0     8.0",
                "whole lab                   6     3.0    12.0",
            ]
        );
    }
}
