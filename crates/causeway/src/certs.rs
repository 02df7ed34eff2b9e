//! `causeway certs`: flags and environment variables of Istio's `Makefile.selfsigned.mk`, mapped onto
//! the CA library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use causeway_ca::SpiffeId;
use causeway_ca::certs_dir;
use causeway_ca::issue::{IntermediateCaProfile, KeyType, RootCaProfile, WorkloadProfile};
use clap::{Args, Parser, Subcommand, ValueEnum};
use time::Duration;

#[derive(Subcommand)]
#[command(after_help = "\
The Makefile's target names work too:
  causeway certs <name>-cacerts      same as: causeway certs intermediate <name>
  causeway certs <namespace>-certs   same as: causeway certs workload --namespace <namespace>
Settings can also come from the Makefile's variables (ROOTCA_DAYS, ROOTCA_KEYSZ, ROOTCA_ORG, ROOTCA_CN,
INTERMEDIATE_DAYS, INTERMEDIATE_KEYSZ, INTERMEDIATE_ORG, INTERMEDIATE_CN, INTERMEDIATE_SAN_DNS,
WORKLOAD_DAYS, WORKLOAD_CN, SERVICE_ACCOUNT) set in the environment.")]
pub enum CertsCommand {
    /// Generate the root CA: root-key.pem and root-cert.pem (the Makefile's `root-ca`)
    RootCa(RootCaArgs),
    /// Generate a cluster's intermediate CA, signed by the root, in <name>/: ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem, ready for `kubectl create secret generic cacerts` (`<name>-cacerts`)
    Intermediate(IntermediateArgs),
    /// Generate a workload (VM) key and certificate for a namespace and service account in <namespace>/
    /// (`<namespace>-certs`)
    Workload(WorkloadArgs),
    /// Remove the generated root files and the generated files in each cluster or namespace directory
    Clean(CleanArgs),
    #[command(external_subcommand)]
    MakefileTarget(Vec<String>),
}

/// Lets a Makefile target name be re-parsed as one of the commands above.
#[derive(Parser)]
#[command(name = "causeway certs")]
struct CertsOnly {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA, of --key-size bits
    Rsa,
    /// ECDSA on NIST P-256
    EcdsaP256,
}

#[derive(Args)]
pub struct Location {
    /// Working directory: root files here, one subdirectory per cluster or namespace
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Directory holding root-cert.pem and root-key.pem [default: --dir]
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// Replace an existing private key (and the certificates made with it)
    #[arg(long)]
    force: bool,
}

impl Location {
    fn root_dir(&self) -> &Path {
        self.root_dir.as_deref().unwrap_or(&self.dir)
    }
}

#[derive(Args)]
pub struct RootCaArgs {
    #[command(flatten)]
    location: Location,
    /// Subject organisation (O)
    #[arg(long, env = "ROOTCA_ORG", default_value = "Istio")]
    org: String,
    /// Subject common name (CN)
    #[arg(long, env = "ROOTCA_CN", default_value = "Root CA")]
    cn: String,
    /// Validity in days
    #[arg(long, env = "ROOTCA_DAYS", default_value_t = 3650)]
    days: i64,
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
    key_type: KeyAlgorithm,
    /// RSA key size in bits (2048, 3072 or 4096)
    #[arg(long, env = "ROOTCA_KEYSZ", default_value_t = 4096)]
    key_size: u32,
}

#[derive(Args)]
pub struct IntermediateArgs {
    /// Cluster name: the output directory and the subject's locality (L)
    name: String,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    settings: IntermediateSettings,
}

#[derive(Args)]
pub struct IntermediateSettings {
    /// Subject organisation (O)
    #[arg(long, env = "INTERMEDIATE_ORG", default_value = "Istio")]
    org: String,
    /// Subject common name (CN)
    #[arg(long, env = "INTERMEDIATE_CN", default_value = "Intermediate CA")]
    cn: String,
    /// DNS subject alternative name (repeat for several)
    #[arg(
        long,
        env = "INTERMEDIATE_SAN_DNS",
        default_value = "istiod.istio-system.svc"
    )]
    san_dns: Vec<String>,
    /// Validity in days (never beyond the root's expiry)
    #[arg(long, env = "INTERMEDIATE_DAYS", default_value_t = 730)]
    days: i64,
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
    key_type: KeyAlgorithm,
    /// RSA key size in bits (2048, 3072 or 4096)
    #[arg(long, env = "INTERMEDIATE_KEYSZ", default_value_t = 4096)]
    key_size: u32,
}

#[derive(Args)]
pub struct WorkloadArgs {
    /// Namespace of the workload: the output directory and the SPIFFE ID's namespace
    #[arg(long, short = 'n')]
    namespace: String,
    /// Service account of the workload
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Trust domain of the SPIFFE ID
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Validity in days (never beyond the signing CA's expiry)
    #[arg(long, env = "WORKLOAD_DAYS", default_value_t = 1)]
    days: i64,
    /// Subject common name (CN)
    #[arg(long, env = "WORKLOAD_CN", default_value = "Workload")]
    cn: String,
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
    key_type: KeyAlgorithm,
    /// RSA key size in bits, with --key-type rsa
    #[arg(long, default_value_t = 2048)]
    key_size: u32,
    /// Sign with the intermediate CA in this directory (a cluster's cacerts) instead of creating one
    /// for the namespace, as the Makefile does
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    location: Location,
    #[command(
        flatten,
        next_help_heading = "Namespace intermediate CA (made when --ca-dir is not given and <namespace>/ca-key.pem does not exist)"
    )]
    intermediate: NamespaceIntermediateSettings,
}

#[derive(Args)]
pub struct NamespaceIntermediateSettings {
    /// Subject organisation (O), also used for the workload certificate
    #[arg(long, env = "INTERMEDIATE_ORG", default_value = "Istio")]
    intermediate_org: String,
    /// Validity in days
    #[arg(long, env = "INTERMEDIATE_DAYS", default_value_t = 730)]
    intermediate_days: i64,
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
    intermediate_key_type: KeyAlgorithm,
    /// RSA key size in bits
    #[arg(long, env = "INTERMEDIATE_KEYSZ", default_value_t = 4096)]
    intermediate_key_size: u32,
}

#[derive(Args)]
pub struct CleanArgs {
    /// Working directory to clean
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::RootCa(args) => {
            let profile = RootCaProfile {
                organization: args.org,
                common_name: args.cn,
                validity: days(args.days)?,
                key_type: key_type(args.key_type, args.key_size)?,
            };
            let written =
                certs_dir::create_root(&args.location.dir, &profile, args.location.force)?;
            report(&written);
            Ok(())
        }
        CertsCommand::Intermediate(args) => {
            let profile = intermediate_profile(&args.name, args.settings)?;
            let written = certs_dir::create_intermediate(
                &args.location.dir,
                args.location.root_dir(),
                &profile,
                args.location.force,
            )?;
            report(&written);
            let dir = args.location.dir.join(&args.name);
            println!(
                "\nTo use it in a cluster:\n  kubectl create secret generic cacerts -n istio-system \\\n    --from-file={0}/ca-cert.pem --from-file={0}/ca-key.pem \\\n    --from-file={0}/root-cert.pem --from-file={0}/cert-chain.pem",
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Workload(args) => {
            let identity =
                SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)
                    .context("the workload's identity is not a valid SPIFFE ID")?;
            let workload = WorkloadProfile {
                identity,
                organization: args.intermediate.intermediate_org.clone(),
                common_name: args.cn,
                validity: days(args.days)?,
                key_type: key_type(args.key_type, args.key_size)?,
            };
            let intermediate = IntermediateCaProfile {
                organization: args.intermediate.intermediate_org,
                validity: days(args.intermediate.intermediate_days)?,
                key_type: key_type(
                    args.intermediate.intermediate_key_type,
                    args.intermediate.intermediate_key_size,
                )?,
                ..IntermediateCaProfile::for_cluster(&args.namespace)
            };
            let written = certs_dir::create_workload(
                &args.location.dir,
                args.location.root_dir(),
                args.ca_dir.as_deref(),
                &intermediate,
                &workload,
                args.location.force,
            )?;
            report(&written);
            Ok(())
        }
        CertsCommand::Clean(args) => {
            let removed = certs_dir::clean(&args.dir)?;
            for path in &removed {
                println!("removed {}", path.display());
            }
            if removed.is_empty() {
                println!("nothing to clean in {}", args.dir.display());
            }
            Ok(())
        }
        CertsCommand::MakefileTarget(words) => run(makefile_target(&words)?),
    }
}

/// `cluster01-cacerts` → `intermediate cluster01`, `sample-certs` → `workload --namespace sample`.
fn makefile_target(words: &[String]) -> Result<CertsCommand> {
    let (target, rest) = words.split_first().context("no certs command given")?;
    let mut argv = vec!["causeway certs".to_owned()];
    if let Some(name) = target.strip_suffix("-cacerts").filter(|n| !n.is_empty()) {
        argv.extend(["intermediate".to_owned(), name.to_owned()]);
    } else if let Some(namespace) = target.strip_suffix("-certs").filter(|n| !n.is_empty()) {
        argv.extend([
            "workload".to_owned(),
            "--namespace".to_owned(),
            namespace.to_owned(),
        ]);
    } else {
        bail!(
            "unknown certs command '{target}'; use root-ca, intermediate, workload, clean, or a Makefile target <name>-cacerts / <namespace>-certs (see causeway certs --help)"
        );
    }
    argv.extend(rest.iter().cloned());
    match CertsOnly::try_parse_from(argv) {
        Ok(parsed) => Ok(parsed.command),
        Err(error) => error.exit(),
    }
}

fn intermediate_profile(
    name: &str,
    settings: IntermediateSettings,
) -> Result<IntermediateCaProfile> {
    Ok(IntermediateCaProfile {
        organization: settings.org,
        common_name: settings.cn,
        locality: name.to_owned(),
        san_dns: settings.san_dns,
        validity: days(settings.days)?,
        key_type: key_type(settings.key_type, settings.key_size)?,
    })
}

fn key_type(algorithm: KeyAlgorithm, key_size: u32) -> Result<KeyType> {
    Ok(match algorithm {
        KeyAlgorithm::Rsa => KeyType::rsa(key_size)?,
        KeyAlgorithm::EcdsaP256 => KeyType::EcdsaP256,
    })
}

fn days(count: i64) -> Result<Duration> {
    if count <= 0 || count > 100 * 366 {
        bail!("a validity of {count} days is out of range; give between 1 and 36600 days");
    }
    Ok(Duration::days(count))
}

fn report(written: &[PathBuf]) {
    for path in written {
        println!("wrote {}", path.display());
    }
}
