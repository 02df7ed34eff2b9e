//! Traffic capture for a sidecar, as istio-init sets it up in the pod's network namespace: the
//! pod's outbound TCP goes to the proxy's outbound port (15001), inbound TCP to its inbound port
//! (15006), and, with DNS capture on, DNS to the proxy's DNS port (15053). The proxy's own
//! connections carry a socket mark (`SO_MARK`, 1337 by default, Istio's proxy uid) and pass
//! untouched, so that what the proxy sends upstream is not captured again.
//!
//! The rules are one `iptables-restore` input for the `nat` table, so applying them twice gives
//! the same table, and `--dry-run` shows exactly what would be applied.

use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

/// Istio's proxy ports that are never captured inbound: health (15021), merged metrics (15020)
/// and Envoy-style metrics (15090).
pub const DEFAULT_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

/// Which inbound ports are sent to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port (Istio's `*`), except the excluded ones.
    All,
    /// Only these (Istio's explicit port list).
    Only(Vec<u16>),
}

#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub dns_port: u16,
    /// The socket mark of the proxy's own connections.
    pub proxy_mark: u32,
    pub inbound_ports: InboundPorts,
    pub excluded_inbound_ports: Vec<u16>,
    pub excluded_outbound_ports: Vec<u16>,
    pub excluded_outbound_cidrs: Vec<IpNet>,
    /// Send the pod's DNS (UDP and TCP port 53) to the proxy's DNS port.
    pub capture_dns: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            outbound_port: 15001,
            inbound_port: 15006,
            dns_port: 15053,
            proxy_mark: 1337,
            inbound_ports: InboundPorts::All,
            excluded_inbound_ports: DEFAULT_EXCLUDED_INBOUND_PORTS.to_vec(),
            excluded_outbound_ports: Vec::new(),
            excluded_outbound_cidrs: Vec::new(),
            capture_dns: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "cannot run `iptables-restore`: {0}; install Debian's `iptables` package (its nf_tables variant is fine)"
    )]
    Spawn(std::io::Error),
    #[error(
        "`iptables-restore` refused the capture rules ({status}): {stderr}; capture needs root (CAP_NET_ADMIN) inside the pod's network namespace. See the rules with `causeway proxy init --dry-run`"
    )]
    Refused {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "an IPv6 range ({0}) cannot be excluded by the IPv4 rules; IPv6 capture is not supported yet"
    )]
    Ipv6(IpNet),
}

const INBOUND: &str = "CAUSEWAY_INBOUND";
const IN_REDIRECT: &str = "CAUSEWAY_IN_REDIRECT";
const OUTPUT: &str = "CAUSEWAY_OUTPUT";
const REDIRECT: &str = "CAUSEWAY_REDIRECT";

impl CaptureConfig {
    /// The `nat` table as `iptables-restore` input.
    pub fn rules(&self) -> Result<String, CaptureError> {
        if let Some(v6) = self
            .excluded_outbound_cidrs
            .iter()
            .find(|cidr| matches!(cidr, IpNet::V6(_)))
        {
            return Err(CaptureError::Ipv6(*v6));
        }
        let mark = self.proxy_mark;
        let mut rules = vec![
            "*nat".to_owned(),
            ":PREROUTING ACCEPT [0:0]".to_owned(),
            ":INPUT ACCEPT [0:0]".to_owned(),
            ":OUTPUT ACCEPT [0:0]".to_owned(),
            ":POSTROUTING ACCEPT [0:0]".to_owned(),
        ];
        rules.extend(
            [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT].map(|chain| format!(":{chain} - [0:0]")),
        );
        rules.push(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        rules.push(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
        if self.capture_dns {
            // UDP never reaches the TCP chains; the DNS proxy's own queries carry the mark.
            rules.push(format!(
                "-A OUTPUT -p udp --dport 53 -m mark ! --mark {mark} -j REDIRECT --to-ports {}",
                self.dns_port
            ));
        }

        // Inbound: connections to the pod, except the proxy's own ports and the excluded ones.
        let never_inbound = [self.inbound_port, self.outbound_port];
        for port in never_inbound.iter().chain(&self.excluded_inbound_ports) {
            rules.push(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
        }
        match &self.inbound_ports {
            InboundPorts::All => rules.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}")),
            InboundPorts::Only(ports) => rules.extend(
                ports
                    .iter()
                    .map(|port| format!("-A {INBOUND} -p tcp --dport {port} -j {IN_REDIRECT}")),
            ),
        }
        rules.push(format!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));

        // Outbound: everything the application sends, except to itself and what is excluded.
        rules.push(format!("-A {OUTPUT} -m mark --mark {mark} -j RETURN"));
        rules.push(format!("-A {OUTPUT} -o lo -j RETURN"));
        rules.push(format!("-A {OUTPUT} -d 127.0.0.1/32 -j RETURN"));
        for cidr in &self.excluded_outbound_cidrs {
            rules.push(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
        }
        for port in &self.excluded_outbound_ports {
            rules.push(format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"));
        }
        if self.capture_dns {
            rules.push(format!(
                "-A {OUTPUT} -p tcp --dport 53 -j REDIRECT --to-ports {}",
                self.dns_port
            ));
        }
        rules.push(format!("-A {OUTPUT} -j {REDIRECT}"));
        rules.push(format!(
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        rules.push("COMMIT".to_owned());
        let mut text = rules.join("\n");
        text.push('\n');
        Ok(text)
    }

    /// Replaces the `nat` table of the current network namespace with the capture rules.
    pub fn apply(&self) -> Result<(), CaptureError> {
        let rules = self.rules()?;
        let mut child = Command::new("iptables-restore")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(CaptureError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(CaptureError::Spawn)?;
        }
        let output = child.wait_with_output().map_err(CaptureError::Spawn)?;
        if !output.status.success() {
            return Err(CaptureError::Refused {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(rules: &str, line: &str) -> usize {
        rules
            .lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("`{line}` missing from\n{rules}"))
    }

    #[test]
    fn the_proxys_own_connections_return_before_anything_is_redirected() {
        let rules = CaptureConfig::default().rules().unwrap();
        let own = position(&rules, "-A CAUSEWAY_OUTPUT -m mark --mark 1337 -j RETURN");
        let redirect = position(&rules, "-A CAUSEWAY_OUTPUT -j CAUSEWAY_REDIRECT");
        assert!(own < redirect);
        position(
            &rules,
            "-A CAUSEWAY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        );
        assert!(
            !rules.contains("--dport 53"),
            "DNS is captured only when asked"
        );
    }

    #[test]
    fn excluded_inbound_ports_return_before_the_inbound_redirect() {
        let rules = CaptureConfig::default().rules().unwrap();
        let redirect = position(&rules, "-A CAUSEWAY_INBOUND -p tcp -j CAUSEWAY_IN_REDIRECT");
        for port in [15006, 15001, 15090, 15021, 15020] {
            let excluded = position(
                &rules,
                &format!("-A CAUSEWAY_INBOUND -p tcp --dport {port} -j RETURN"),
            );
            assert!(excluded < redirect, "port {port}");
        }
    }

    #[test]
    fn listed_inbound_ports_excluded_outbound_ranges_and_dns() {
        let config = CaptureConfig {
            inbound_ports: InboundPorts::Only(vec![5000, 9080]),
            excluded_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            excluded_outbound_ports: vec![3306],
            capture_dns: true,
            ..CaptureConfig::default()
        };
        let rules = config.rules().unwrap();
        assert!(!rules.contains("-A CAUSEWAY_INBOUND -p tcp -j CAUSEWAY_IN_REDIRECT"));
        position(
            &rules,
            "-A CAUSEWAY_INBOUND -p tcp --dport 5000 -j CAUSEWAY_IN_REDIRECT",
        );
        position(
            &rules,
            "-A CAUSEWAY_INBOUND -p tcp --dport 9080 -j CAUSEWAY_IN_REDIRECT",
        );
        let redirect = position(&rules, "-A CAUSEWAY_OUTPUT -j CAUSEWAY_REDIRECT");
        assert!(position(&rules, "-A CAUSEWAY_OUTPUT -d 10.0.0.0/8 -j RETURN") < redirect);
        assert!(position(&rules, "-A CAUSEWAY_OUTPUT -p tcp --dport 3306 -j RETURN") < redirect);
        assert!(
            position(
                &rules,
                "-A CAUSEWAY_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053"
            ) < redirect
        );
        position(
            &rules,
            "-A OUTPUT -p udp --dport 53 -m mark ! --mark 1337 -j REDIRECT --to-ports 15053",
        );
    }

    #[test]
    fn ipv6_exclusions_are_refused_with_a_reason() {
        let config = CaptureConfig {
            excluded_outbound_cidrs: vec!["fd00::/8".parse().unwrap()],
            ..CaptureConfig::default()
        };
        let error = config.rules().unwrap_err().to_string();
        assert!(
            error.contains("fd00::/8") && error.contains("IPv6"),
            "{error}"
        );
    }
}
