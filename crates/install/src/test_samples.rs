//! The repository's sample files, read by the tests of this crate.

use crate::render::{INJECTOR_CONFIG_MAP, MESH_CONFIG_MAP, render};

/// The text of `testdata/samples/<path>`.
pub fn sample_text(path: &str) -> String {
    let full = format!(
        "{}/../../testdata/samples/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{full}: {error}"))
}

/// A sample as install reads a file: its name and text.
pub fn sample_file(path: &str) -> (String, String) {
    (path.to_owned(), sample_text(path))
}

/// The injector config install renders for a sample topology file.
pub fn sample_injection_config(path: &str, sets: &[&str]) -> crate::inject::InjectionConfig {
    let sets: Vec<String> = sets.iter().map(|set| (*set).to_owned()).collect();
    let objects = render(&crate::settings::load(&[sample_file(path)], &sets).unwrap());
    let map = |name: &str| -> k8s_openapi::api::core::v1::ConfigMap {
        let object = objects
            .iter()
            .find(|object| object.kind() == "ConfigMap" && object.name() == name)
            .unwrap_or_else(|| panic!("{path} renders no ConfigMap {name}"));
        serde_json::from_value(serde_json::to_value(&object.object).unwrap()).unwrap()
    };
    crate::inject::InjectionConfig::from_config_maps(
        &map(INJECTOR_CONFIG_MAP),
        &map(MESH_CONFIG_MAP),
    )
    .unwrap()
}
