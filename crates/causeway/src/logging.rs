//! The log of the mesh's long-running processes (discovery, the proxies, the operator):
//! `RUST_LOG`, else `info`, to standard error, with colour codes only on a terminal (a
//! container's log is a file).

pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
