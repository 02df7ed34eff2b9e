//! `causeway proxy ...`: the data plane. `init` is istio-init's job: run inside a pod's network
//! namespace before the application, it sends the pod's traffic through the sidecar. `sidecar`
//! is the proxy itself (pilot-agent and Envoy in one process).

mod sidecar;

use anyhow::Context;
use causeway_proxy::capture::{CaptureConfig, DEFAULT_EXCLUDED_INBOUND_PORTS, InboundPorts};
use clap::{Args, Subcommand};
use ipnet::IpNet;

#[derive(Subcommand)]
pub enum ProxyCommand {
    /// Capture the pod's traffic for its sidecar with iptables (istio-init): run it inside the
    /// pod's network namespace, as root
    Init(InitArgs),
    /// Run the sidecar proxy of one pod (what Istio's injector adds as `istio-proxy`): xDS from
    /// discovery, a certificate from its CA, captured traffic on 15001/15006, DNS on 15053
    Sidecar(Box<sidecar::SidecarArgs>),
    /// Run the east-west gateway (`ISTIO_META_ROUTER_MODE=sni-dnat`): routes mTLS by SNI to
    /// this network's endpoints without terminating it
    Router(Box<sidecar::RouterArgs>),
    /// Wait until the proxy in this pod is ready (pilot-agent wait): the injected postStart hook
    /// that holds the application's start until its proxy serves
    Wait(WaitArgs),
}

#[derive(Args)]
pub struct WaitArgs {
    /// Give up after this long
    #[arg(long, default_value = "60s", value_parser = crate::discovery::parse_duration)]
    timeout: std::time::Duration,
    /// The proxy's health port (`/healthz/ready`)
    #[arg(long, default_value_t = 15021)]
    port: u16,
}

#[derive(Args)]
pub struct InitArgs {
    /// Where outbound TCP is sent (istio-iptables -p)
    #[arg(short = 'p', long, default_value_t = 15001)]
    proxy_port: u16,
    /// Where inbound TCP is sent (istio-iptables -z)
    #[arg(short = 'z', long, default_value_t = 15006)]
    inbound_capture_port: u16,
    /// Inbound ports to capture: `*` for all, or a comma-separated list (istio-iptables -b)
    #[arg(short = 'b', long, default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never captured (istio-iptables -d)
    #[arg(short = 'd', long, value_delimiter = ',', default_values_t = DEFAULT_EXCLUDED_INBOUND_PORTS)]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound ports never captured (istio-iptables -o)
    #[arg(short = 'o', long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound IPv4 ranges never captured, as CIDRs (istio-iptables -x)
    #[arg(short = 'x', long, value_delimiter = ',')]
    exclude_outbound_ip_ranges: Vec<IpNet>,
    /// The socket mark of the proxy's own connections, which pass uncaptured (Istio's proxy
    /// uid, 1337, used as a mark)
    #[arg(long, default_value_t = 1337)]
    proxy_mark: u32,
    /// Also send the pod's DNS (port 53, UDP and TCP) to the proxy's DNS port
    #[arg(long, alias = "redirect-dns")]
    capture_dns: bool,
    /// The proxy's DNS port
    #[arg(long, default_value_t = 15053)]
    dns_port: u16,
    /// Print the rules (iptables-restore input) instead of applying them
    #[arg(long)]
    dry_run: bool,
}

fn inbound_ports(text: &str) -> anyhow::Result<InboundPorts> {
    let text = text.trim();
    if text == "*" {
        return Ok(InboundPorts::All);
    }
    text.split(',')
        .filter(|port| !port.trim().is_empty())
        .map(|port| {
            port.trim().parse::<u16>().with_context(|| {
                format!("--inbound-ports: `{port}` is not a port; give `*` or ports like 5000,9080")
            })
        })
        .collect::<anyhow::Result<Vec<u16>>>()
        .map(InboundPorts::Only)
}

pub fn run(command: ProxyCommand) -> anyhow::Result<()> {
    match command {
        ProxyCommand::Init(args) => init(args),
        ProxyCommand::Sidecar(args) => sidecar::run_sidecar(*args),
        ProxyCommand::Router(args) => sidecar::run_router(*args),
        ProxyCommand::Wait(args) => wait(args),
    }
}

/// One readiness check: the proxy answers `GET /healthz/ready` with 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) =
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    if stream
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while !ready(args.port) {
        if started.elapsed() >= args.timeout {
            anyhow::bail!(
                "the proxy is not ready after {:?} (http://127.0.0.1:{}/healthz/ready); see its log (`kubectl logs <pod> -c istio-proxy`)",
                args.timeout,
                args.port
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "the proxy is ready after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let config = CaptureConfig {
        outbound_port: args.proxy_port,
        inbound_port: args.inbound_capture_port,
        dns_port: args.dns_port,
        proxy_mark: args.proxy_mark,
        inbound_ports: inbound_ports(&args.inbound_ports)?,
        excluded_inbound_ports: args.exclude_inbound_ports,
        excluded_outbound_ports: args.exclude_outbound_ports,
        excluded_outbound_cidrs: args.exclude_outbound_ip_ranges,
        capture_dns: args.capture_dns,
    };
    if args.dry_run {
        print!("{}", config.rules()?);
        return Ok(());
    }
    config.apply()?;
    eprintln!(
        "traffic captured: outbound TCP to {}, inbound TCP to {}{}",
        config.outbound_port,
        config.inbound_port,
        if config.capture_dns {
            format!(", DNS to {}", config.dns_port)
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_port_lists_are_read_or_refused_with_the_bad_entry() {
        assert_eq!(inbound_ports("*").unwrap(), InboundPorts::All);
        assert_eq!(
            inbound_ports("5000, 9080").unwrap(),
            InboundPorts::Only(vec![5000, 9080])
        );
        let error = format!("{:#}", inbound_ports("5000,http").unwrap_err());
        assert!(error.contains("`http`"), "{error}");
    }
}
