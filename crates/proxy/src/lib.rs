//! Causeway's data plane. Today: [`capture`], the iptables rules that send a pod's traffic
//! through its sidecar (istio-init's job, `causeway proxy init`).
#![forbid(unsafe_code)]

pub mod capture;
