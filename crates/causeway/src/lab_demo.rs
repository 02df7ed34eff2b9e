//! `causeway lab demo [TOPOLOGY]`: runs one of the seeds' walkthroughs (`examples/<TOPOLOGY>.sh`)
//! from nothing to a verified mesh. The scripts are the one source of truth for the steps, so a
//! reader can hold them next to the seeds; this command finds them, runs them with this binary
//! standing in for istioctl, kind and docker, and passes their exit status on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

pub const DEFAULT_TOPOLOGY: &str = "multi-primary-multi-network";

#[derive(Args)]
pub struct DemoArgs {
    /// The walkthrough to run (`--list` names them)
    #[arg(default_value = DEFAULT_TOPOLOGY)]
    topology: String,
    /// Name the walkthroughs and the seeds they follow
    #[arg(long)]
    list: bool,
    /// Where the walkthrough keeps its clusters, kubeconfig, certificates and log
    #[arg(long, default_value = "demo-lab", value_name = "DIR")]
    dir: PathBuf,
    /// Print every command's output as it runs, not only the steps
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// The `examples/` directory: $CAUSEWAY_EXAMPLES, else the checkout this binary was built in
/// (`<repo>/target/<profile>/causeway`), else one above the current directory.
fn examples_dir(executable: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAUSEWAY_EXAMPLES") {
        return Ok(PathBuf::from(dir));
    }
    let current = std::env::current_dir().ok();
    let candidates = executable
        .ancestors()
        .chain(current.iter().flat_map(|dir| dir.ancestors()));
    for dir in candidates {
        let examples = dir.join("examples");
        if examples.join("lib.sh").is_file() {
            return Ok(examples);
        }
    }
    bail!(
        "cannot find the walkthroughs (examples/lib.sh) above {} or the current directory; run from the causeway checkout or set CAUSEWAY_EXAMPLES",
        executable.display()
    )
}

/// The walkthroughs in `examples`, each with the first line of its header comment.
fn walkthroughs(examples: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(examples)
        .with_context(|| format!("cannot list {}", examples.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".sh"))
        else {
            continue;
        };
        if name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let summary = text
            .lines()
            .find(|line| line.starts_with("# "))
            .map(|line| line.trim_start_matches("# ").to_owned())
            .unwrap_or_default();
        found.push((name.to_owned(), summary));
    }
    found.sort();
    Ok(found)
}

/// Runs the walkthrough; its exit code.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let executable = std::env::current_exe().context("cannot find the causeway executable")?;
    let examples = examples_dir(&executable)?;
    let known = walkthroughs(&examples)?;
    if args.list {
        let width = known.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, summary) in &known {
            println!("{name:<width$}  {summary}");
        }
        return Ok(0);
    }
    if !known.iter().any(|(name, _)| *name == args.topology) {
        let names: Vec<&str> = known.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "no walkthrough named {:?}; the walkthroughs are: {}",
            args.topology,
            names.join(", ")
        );
    }
    let script = examples.join(format!("{}.sh", args.topology));
    let status = Command::new("bash")
        .arg(&script)
        .env("CAUSEWAY", &executable)
        .env("WALKTHROUGH_DIR", &args.dir)
        .env("VERBOSE", if args.verbose { "1" } else { "0" })
        .status()
        .with_context(|| format!("cannot run bash {}", script.display()))?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walkthroughs_are_the_scripts_with_their_first_comment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lib.sh"), "# shared\n").unwrap();
        std::fs::write(
            dir.path().join("b.sh"),
            "#!/usr/bin/env bash\n# Seed 001: b\n# more\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.sh"),
            "#!/usr/bin/env bash\n# Seed 002: a\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "# not a walkthrough\n").unwrap();
        assert_eq!(
            walkthroughs(dir.path()).unwrap(),
            [
                ("a".to_owned(), "Seed 002: a".to_owned()),
                ("b".to_owned(), "Seed 001: b".to_owned())
            ]
        );
    }

    #[test]
    fn the_checkout_is_found_from_the_binary() {
        let repo = env!("CARGO_MANIFEST_DIR")
            .strip_suffix("/crates/causeway")
            .unwrap();
        let binary = Path::new(repo).join("target/debug/causeway");
        assert_eq!(
            examples_dir(&binary).unwrap(),
            Path::new(repo).join("examples")
        );
    }
}
