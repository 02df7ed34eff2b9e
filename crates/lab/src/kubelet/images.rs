//! What a container image runs in the lab, which pulls nothing: any image named `causeway` runs
//! this build's `causeway`; the images of Istio's samples run built-in apps written for the lab
//! (helloworld, httpbin); curl and shell images run their command with the host's programs
//! (`sleep infinity` idles, `curl` is the host's curl). Anything else cannot start, and says so.

use std::path::Path;

/// A built-in app and the port its image listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltIn {
    /// Istio's `examples-helloworld-vN`: `GET /hello` answers `Hello version: vN, instance: <pod>`.
    HelloWorld { version: String },
    /// httpbin's basic endpoints (`/get`, `/headers`, `/status/<code>`, `/ip`, `/delay/<s>`).
    HttpBin { port: u16 },
}

/// Why an image cannot run in the lab.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "image {image:?} is not available in the lab: it runs `causeway` images (this build), Istio's \
     sample images (helloworld, httpbin), and curl, busybox and alpine images (with the host's \
     programs)"
)]
pub struct UnknownImage {
    pub image: String,
}

/// The repository's last path component, without tag or digest: `curl` for
/// `docker.io/curlimages/curl:8.16.0`.
fn short_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The repository without registry host, tag or digest: `curlimages/curl`.
fn repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let mut parts: Vec<&str> = without_digest.split('/').collect();
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        parts.remove(0);
    }
    let joined = parts.join("/");
    match joined.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository.to_owned(),
        _ => joined,
    }
}

/// The built-in app an image stands for, if any.
pub fn built_in(image: &str) -> Option<BuiltIn> {
    let name = short_name(image);
    if let Some(version) = name.strip_prefix("examples-helloworld-") {
        return Some(BuiltIn::HelloWorld {
            version: version.to_owned(),
        });
    }
    match repository(image).as_str() {
        "kennethreitz/httpbin" | "kong/httpbin" | "istio/httpbin" | "citizenstig/httpbin" => {
            Some(BuiltIn::HttpBin { port: 80 })
        }
        "mccutchen/go-httpbin" => Some(BuiltIn::HttpBin { port: 8080 }),
        _ => None,
    }
}

/// Images whose programs the host has: their entrypoint when the pod gives no command.
fn host_entrypoint(image: &str) -> Option<Vec<String>> {
    let repository = repository(image);
    let words = |words: &[&str]| Some(words.iter().map(|word| (*word).to_owned()).collect());
    match repository.as_str() {
        "curlimages/curl"
        | "governmentpaas/curl-ssl"
        | "appropriate/curl"
        | "tutum/curl"
        | "radial/busyboxplus" => words(&["curl"]),
        "busybox" | "library/busybox" | "alpine" | "library/alpine" => words(&["sh"]),
        _ => None,
    }
}

fn is_causeway(image: &str) -> bool {
    short_name(image) == "causeway"
}

/// The command line a container runs: its image's program, or the pod's `command` in its place,
/// followed by `args`.
pub fn command_line(
    image: &str,
    command: &[String],
    args: &[String],
    causeway: &Path,
) -> Result<Vec<String>, UnknownImage> {
    let causeway = causeway.display().to_string();
    let mut line: Vec<String> = if is_causeway(image) {
        match command.split_first() {
            None => vec![causeway],
            // `causeway` by any path is this build's.
            Some((program, rest)) if short_name(program) == "causeway" => std::iter::once(causeway)
                .chain(rest.iter().cloned())
                .collect(),
            Some(_) => command.to_vec(),
        }
    } else if let Some(app) = built_in(image) {
        // The image's own program is the app, whatever the pod says to run.
        let mut line = vec![causeway, "lab".into(), "app".into()];
        match app {
            BuiltIn::HelloWorld { version } => {
                line.extend(["helloworld".into(), "--version".into(), version]);
            }
            BuiltIn::HttpBin { port } => {
                line.extend(["httpbin".into(), "--port".into(), port.to_string()]);
            }
        }
        return Ok(line);
    } else if let Some(entrypoint) = host_entrypoint(image) {
        if command.is_empty() {
            entrypoint
        } else {
            command.to_vec()
        }
    } else {
        return Err(UnknownImage {
            image: image.to_owned(),
        });
    };
    line.extend(args.iter().cloned());
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(image: &str, command: &[&str], args: &[&str]) -> Result<Vec<String>, UnknownImage> {
        let own = |words: &[&str]| {
            words
                .iter()
                .map(|word| (*word).to_owned())
                .collect::<Vec<_>>()
        };
        command_line(image, &own(command), &own(args), Path::new("/opt/causeway"))
    }

    /// An image, the pod's command and args, and what runs.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    #[test]
    fn images_map_to_what_the_lab_runs() {
        let cases: &[Case<'_>] = &[
            // Istio's samples.
            (
                "registry.istio.io/release/examples-helloworld-v1:1.0",
                &[],
                &[],
                &[
                    "/opt/causeway",
                    "lab",
                    "app",
                    "helloworld",
                    "--version",
                    "v1",
                ],
            ),
            (
                "docker.io/istio/examples-helloworld-v2",
                &[],
                &[],
                &[
                    "/opt/causeway",
                    "lab",
                    "app",
                    "helloworld",
                    "--version",
                    "v2",
                ],
            ),
            (
                "docker.io/kennethreitz/httpbin",
                &[],
                &[],
                &["/opt/causeway", "lab", "app", "httpbin", "--port", "80"],
            ),
            (
                "mccutchen/go-httpbin:v2",
                &["/bin/go-httpbin"],
                &[],
                &["/opt/causeway", "lab", "app", "httpbin", "--port", "8080"],
            ),
            // sleep: the command runs with the host's programs.
            (
                "curlimages/curl:8.16.0",
                &["/bin/sleep", "infinity"],
                &[],
                &["/bin/sleep", "infinity"],
            ),
            (
                "curlimages/curl",
                &[],
                &["-s", "http://x"],
                &["curl", "-s", "http://x"],
            ),
            (
                "busybox:1.36",
                &[],
                &["-c", "exit 3"],
                &["sh", "-c", "exit 3"],
            ),
            // causeway by any registry and tag, with or without a command.
            (
                "docker.io/causeway/causeway:dev",
                &[],
                &["discovery"],
                &["/opt/causeway", "discovery"],
            ),
            (
                "localhost:5000/causeway",
                &["/usr/local/bin/causeway"],
                &["proxy", "sidecar"],
                &["/opt/causeway", "proxy", "sidecar"],
            ),
            (
                "causeway",
                &["sh", "-c"],
                &["echo hi"],
                &["sh", "-c", "echo hi"],
            ),
        ];
        for (image, command, args, expected) in cases {
            assert_eq!(line(image, command, args).unwrap(), *expected, "{image}");
        }
    }

    #[test]
    fn other_images_cannot_start_and_say_which() {
        let error = line("docker.io/library/nginx:1.27", &[], &[]).unwrap_err();
        assert_eq!(error.image, "docker.io/library/nginx:1.27");
        assert!(
            error.to_string().contains("not available in the lab"),
            "{error}"
        );
        assert!(line("gcr.io/proxyv2/causeway-proxy", &[], &[]).is_err());
    }

    #[test]
    fn repositories_drop_registries_tags_and_digests() {
        assert_eq!(
            repository("docker.io/curlimages/curl:8.16.0"),
            "curlimages/curl"
        );
        assert_eq!(repository("localhost:5000/busybox@sha256:00"), "busybox");
        assert_eq!(repository("alpine"), "alpine");
        assert_eq!(
            short_name("registry.istio.io/release/examples-helloworld-v1:1.0"),
            "examples-helloworld-v1"
        );
    }
}
