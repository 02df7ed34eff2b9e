//! The lab API server driven by the client the control plane uses: `kube` APIs, watchers and
//! reflectors, over several clusters at once, across restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_lab::apiserver::ApiServerConfig;
use causeway_lab::testing::{client as client_for, config, eventually, start};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
        ..Default::default()
    }
}

fn subnet_config(name: &str, directory: &std::path::Path, subnet: &str) -> ApiServerConfig {
    let mut config = config(name, directory);
    config.service_subnet = subnet.parse().unwrap();
    config
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

#[tokio::test]
async fn reflectors_over_two_clusters_see_services_get_cluster_ips_from_their_own_subnets() {
    let directory = tempfile::tempdir().unwrap();
    let cluster01 = start(subnet_config("cluster01", directory.path(), "10.11.0.0/16")).await;
    let cluster02 = start(subnet_config("cluster02", directory.path(), "10.21.0.0/16")).await;
    let mut readers = Vec::new();
    for (name, server) in [("cluster01", &cluster01), ("cluster02", &cluster02)] {
        let client = client_for(name, server).await;
        create_namespace(&client, "sample").await;
        let (reader, writer) = reflector::store::<Service>();
        let stream = reflector(
            writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        );
        tokio::spawn(stream.applied_objects().for_each(|_| async {}));
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "helloworld", "labels": {"app": "helloworld"}},
            "spec": {"selector": {"app": "helloworld"}, "ports": [{"port": 5000, "name": "http"}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(client, "sample")
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
        readers.push(reader);
    }
    for (reader, prefix) in readers.iter().zip(["10.11.", "10.21."]) {
        let cluster_ip = eventually("the reflector to see helloworld", WAIT, || async {
            reader
                .state()
                .iter()
                .find(|service| service.metadata.name.as_deref() == Some("helloworld"))
                .and_then(|service| service.spec.as_ref()?.cluster_ip.clone())
        })
        .await;
        assert!(
            cluster_ip.starts_with(prefix),
            "{cluster_ip} is not in {prefix}0.0/16"
        );
        // Every cluster has the `kubernetes` Service on the first address.
        assert!(reader.state().iter().any(|service| {
            service.metadata.name.as_deref() == Some("kubernetes")
                && service
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.cluster_ip.as_deref())
                    == Some(&format!("{prefix}0.1"))
        }));
    }
    cluster01.shutdown().await;
    cluster02.shutdown().await;
}

#[tokio::test]
async fn endpoint_slices_follow_pod_addresses_and_readiness() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client_for("cluster01", &server).await;
    create_namespace(&client, "sample").await;
    let services = Api::<Service>::namespaced(client.clone(), "sample");
    let pods = Api::<Pod>::namespaced(client.clone(), "sample");
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "sample");
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), "sample");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "helloworld"},
        "spec": {"selector": {"app": "helloworld"}, "ports": [{"port": 5000, "name": "http", "targetPort": "http"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    for (name, address) in [("helloworld-a", "10.10.0.5"), ("helloworld-b", "10.10.0.6")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "helloworld", "version": "v1"}},
            "spec": {"nodeName": "cluster01-control-plane", "containers": [{"name": "helloworld", "image": "helloworld", "ports": [{"name": "http", "containerPort": 5000}]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = json!({"status": {"phase": "Running", "podIP": address, "conditions": [{"type": "Ready", "status": if name.ends_with('a') { "True" } else { "False" }}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let selector = ListParams::default().labels("kubernetes.io/service-name=helloworld");
    let ready_of = |slice: &EndpointSlice| -> Vec<(String, bool)> {
        slice
            .endpoints
            .iter()
            .map(|endpoint| {
                (
                    endpoint.addresses[0].clone(),
                    endpoint
                        .conditions
                        .as_ref()
                        .and_then(|conditions| conditions.ready)
                        .unwrap_or(false),
                )
            })
            .collect()
    };
    eventually(
        "the slice to list both pods with their readiness",
        WAIT,
        || async {
            let list = slices.list(&selector).await.ok()?;
            let slice = list.items.first()?;
            let port = slice.ports.as_ref()?.first()?.port;
            (ready_of(slice)
                == [
                    ("10.10.0.5".to_owned(), true),
                    ("10.10.0.6".to_owned(), false),
                ]
                && port == Some(5000))
            .then_some(())
        },
    )
    .await;
    let subsets = endpoints.get("helloworld").await.unwrap().subsets.unwrap();
    assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, "10.10.0.5");
    assert_eq!(
        subsets[0].not_ready_addresses.as_ref().unwrap()[0].ip,
        "10.10.0.6"
    );

    // A relabelled pod leaves the Service; a deleted one too.
    pods.patch(
        "helloworld-a",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    pods.delete("helloworld-b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the slice to empty", WAIT, || async {
        let list = slices.list(&selector).await.ok()?;
        list.items
            .first()
            .filter(|slice| slice.endpoints.is_empty())
            .map(|_| ())
    })
    .await;
    services
        .delete("helloworld", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the slice and endpoints to go with the Service",
        WAIT,
        || async {
            let slices_left = slices.list(&selector).await.ok()?.items.len();
            let endpoints_left = endpoints.get_opt("helloworld").await.ok()?;
            (slices_left == 0 && endpoints_left.is_none()).then_some(())
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn large_services_are_cut_into_slices_of_a_hundred_endpoints() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client_for("cluster01", &server).await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    for index in 0..210 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("big-{index}"), "labels": {"app": "big"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running", "podIP": format!("10.10.{}.{}", index / 200, index % 200 + 1), "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    let sizes = eventually("210 endpoints in slices of at most 100", WAIT, || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=big"))
            .await
            .ok()?;
        let mut sizes: Vec<usize> = list
            .items
            .iter()
            .map(|slice| slice.endpoints.len())
            .collect();
        sizes.sort();
        (sizes.iter().sum::<usize>() == 210).then_some(sizes)
    })
    .await;
    assert_eq!(sizes, [10, 100, 100]);
    server.shutdown().await;
}

#[tokio::test]
async fn objects_are_unchanged_and_watches_resume_after_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let address = server.address;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    config_maps
        .create(&PostParams::default(), &config_map("before", "1"))
        .await
        .unwrap();
    let mark = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    config_maps
        .create(&PostParams::default(), &config_map("after-1", "2"))
        .await
        .unwrap();
    config_maps
        .patch(
            "before",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"value": "3"}})),
        )
        .await
        .unwrap();
    let everything_before: Vec<serde_json::Value> = kinds_snapshot(&client).await;
    server.shutdown().await;

    let mut restarted_config = config("cluster01", directory.path());
    restarted_config.listen = address;
    let server = start(restarted_config).await;
    let client = client_for("cluster01", &server).await;
    assert_eq!(
        kinds_snapshot(&client).await,
        everything_before,
        "objects changed across the restart"
    );

    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let events: Vec<_> = config_maps
        .watch(&WatchParams::default().timeout(2), &mark)
        .await
        .unwrap()
        .take(2)
        .try_collect()
        .await
        .unwrap();
    let seen: Vec<String> = events
        .iter()
        .map(|event| match event {
            WatchEvent::Added(object) => {
                format!("ADDED {}", object.metadata.name.as_deref().unwrap())
            }
            WatchEvent::Modified(object) => {
                format!("MODIFIED {}", object.metadata.name.as_deref().unwrap())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(seen, ["ADDED after-1", "MODIFIED before"]);
    server.shutdown().await;
}

async fn kinds_snapshot(client: &kube::Client) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for path in [
        "/api/v1/namespaces",
        "/api/v1/configmaps",
        "/api/v1/services",
        "/api/v1/serviceaccounts",
        "/api/v1/nodes",
    ] {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        let list: serde_json::Value = client.request(request).await.unwrap();
        all.extend(list["items"].as_array().unwrap().iter().cloned());
    }
    all
}

#[tokio::test]
async fn a_watch_from_a_forgotten_version_gets_410_and_the_watcher_relists() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let address = server.address;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let (init_sender, mut inits) = tokio::sync::mpsc::unbounded_channel();
    let stream = reflector(
        writer,
        watcher(config_maps.clone(), watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(stream.for_each(move |event| {
        if let Ok(watcher::Event::Init) = event {
            let _ = init_sender.send(());
        }
        async {}
    }));
    inits.recv().await.unwrap();
    config_maps
        .create(&PostParams::default(), &config_map("first", "1"))
        .await
        .unwrap();
    eventually("the reflector to see the first object", WAIT, || async {
        reader
            .get(&reflector::ObjectRef::new("first").within("default"))
            .map(|_| ())
    })
    .await;
    let old_version = config_maps
        .get("first")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.shutdown().await;

    // While the watcher cannot reach it (another address), the cluster changes and compacts its
    // history, as etcd does; back on its address it can no longer serve the watcher's version.
    let elsewhere = start(config("cluster01", directory.path())).await;
    let client = client_for("cluster01", &elsewhere).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    config_maps
        .create(&PostParams::default(), &config_map("second", "2"))
        .await
        .unwrap();
    config_maps
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    elsewhere.shared().store.compact().unwrap();
    elsewhere.shutdown().await;

    let mut restarted_config = config("cluster01", directory.path());
    restarted_config.listen = address;
    let server = start(restarted_config).await;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let error = config_maps
        .watch(&WatchParams::default(), &old_version)
        .await
        .unwrap()
        .boxed()
        .next()
        .await
        .unwrap();
    match error {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 410, "{status:?}"),
        Ok(WatchEvent::Error(status)) => assert_eq!(status.code, 410, "{status:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    tokio::time::timeout(WAIT, inits.recv())
        .await
        .expect("the watcher relists")
        .unwrap();
    eventually(
        "the reflector to hold exactly the second object (and the namespace's root CA)",
        WAIT,
        || async {
            let mut names: Vec<String> = reader
                .state()
                .iter()
                .filter_map(|object| object.metadata.name.clone())
                .collect();
            names.sort();
            (names == ["kube-root-ca.crt", "second"]).then_some(())
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn selectors_filter_lists_and_watches_and_pages_fit_together() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    for index in 0..7 {
        let mut object = config_map(&format!("cm-{index}"), "x");
        object.metadata.labels = Some(BTreeMap::from([(
            "parity".to_owned(),
            if index % 2 == 0 { "even" } else { "odd" }.to_owned(),
        )]));
        config_maps
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }
    let even = config_maps
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    let by_name = config_maps
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let in_set = config_maps
        .list(&ListParams::default().labels("parity in (odd),parity!=even"))
        .await
        .unwrap();
    assert_eq!(in_set.items.len(), 3);

    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    loop {
        let page = config_maps.list(&params).await.unwrap();
        names.extend(
            page.items
                .iter()
                .filter_map(|item| item.metadata.name.clone())
                .filter(|name| name.starts_with("cm-")),
        );
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(
        names,
        (0..7)
            .map(|index| format!("cm-{index}"))
            .collect::<Vec<_>>()
    );

    let mark = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = config_maps
        .watch(
            &WatchParams::default().labels("parity=odd").timeout(5),
            &mark,
        )
        .await
        .unwrap()
        .boxed();
    config_maps
        .patch(
            "cm-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"parity": "odd"}}})),
        )
        .await
        .unwrap();
    config_maps
        .patch(
            "cm-1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"parity": "even"}}})),
        )
        .await
        .unwrap();
    config_maps
        .patch(
            "cm-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"value": "y"}})),
        )
        .await
        .unwrap();
    config_maps
        .patch(
            "cm-3",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"value": "y"}})),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match event {
            WatchEvent::Added(object) => format!("ADDED {}", object.metadata.name.unwrap()),
            WatchEvent::Modified(object) => format!("MODIFIED {}", object.metadata.name.unwrap()),
            WatchEvent::Deleted(object) => format!("DELETED {}", object.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED cm-0", "DELETED cm-1", "MODIFIED cm-3"]);
    server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let directory = tempfile::tempdir().unwrap();
    let mut server_config = config("cluster01", directory.path());
    server_config.bookmark_interval = Duration::from_millis(100);
    let server = start(server_config).await;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let mark = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = config_maps
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(5),
            &mark,
        )
        .await
        .unwrap()
        .boxed();
    let created = config_maps
        .create(&PostParams::default(), &config_map("a", "1"))
        .await
        .unwrap();
    let latest = created.metadata.resource_version.unwrap();
    loop {
        match tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Bookmark(bookmark) if bookmark.metadata.resource_version == latest => break,
            _ => continue,
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_api_server_on_the_same_data_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let error = causeway_lab::apiserver::start(config("cluster01", directory.path()))
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("another API server is already serving"),
        "{error}"
    );
    server.shutdown().await;
    start(config("cluster01", directory.path()))
        .await
        .shutdown()
        .await;
}

#[tokio::test]
async fn streaming_lists_end_their_initial_events_with_a_bookmark() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client_for("cluster01", &server).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        config_maps
            .create(&PostParams::default(), &config_map(name, "1"))
            .await
            .unwrap();
    }
    let mut events = watcher(
        config_maps.clone(),
        watcher::Config::default().streaming_lists(),
    )
    .boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the initial events end")
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(object) => initial.push(object.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    // Every namespace also holds the API server's root CA (Kubernetes' root CA publisher).
    assert_eq!(initial, ["a", "b", "kube-root-ca.crt"]);
    config_maps
        .create(&PostParams::default(), &config_map("c", "1"))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(object) = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            assert_eq!(object.metadata.name.as_deref(), Some("c"));
            break;
        }
    }
    server.shutdown().await;
}
