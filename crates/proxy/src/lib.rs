//! Causeway's data plane. Today: [`capture`], the iptables rules that send a pod's traffic
//! through its sidecar (istio-init's job, `causeway proxy init`), and [`passthrough`], how the
//! sidecar forwards a captured connection to where it was going.
#![forbid(unsafe_code)]

pub mod capture;
pub mod passthrough;
