//! Installing Causeway the way Istio is installed: IstioOperator files, `--set` flags and Helm
//! value names in, Kubernetes objects out (`manifest generate`), applied to a cluster or removed
//! from it (`install`, `uninstall`).

pub mod cluster;
pub mod inject;
mod input;
pub mod kube_inject;
mod path;
mod profiles;
pub mod render;
pub mod sail;
mod schema;
mod settings;
#[cfg(test)]
mod test_samples;

pub use input::{InputError, OperatorInput};
pub use profiles::PROFILES;
pub use render::{Component, Ownership, Rendered, render, to_yaml};
pub use schema::{Ignored, WrongSetting};
pub use settings::{
    Gateway, Injection, MeshIdentity, Pilot, ProxyValues, Remote, Settings, SettingsError, load,
};
