//! Service-account tokens (TokenRequest, TokenReview, bound objects) and the requests the API
//! server must refuse with a Kubernetes Status and no change to stored data.

use std::time::Duration;

use causeway_lab::testing::{client, client_with_token, config, eventually, start};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

async fn request_token(accounts: &Api<ServiceAccount>, name: &str, spec: Value) -> String {
    let request: TokenRequest = from_json(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
    );
    let response: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    response.status.unwrap().token
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> Value {
    let review: TokenReview = from_json(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}}),
    );
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    serde_json::to_value(reviewed.status.unwrap()).unwrap()
}

#[tokio::test]
async fn token_reviews_accept_this_clusters_live_tokens_and_say_why_others_fail() {
    let directory = tempfile::tempdir().unwrap();
    let cluster01 = start(config("cluster01", directory.path())).await;
    let cluster02 = start(config("cluster02", directory.path())).await;
    let client01 = client("cluster01", &cluster01).await;
    let client02 = client("cluster02", &cluster02).await;
    Api::<Namespace>::all(client01.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "sample"}})),
        )
        .await
        .unwrap();
    let accounts = Api::<ServiceAccount>::namespaced(client01.clone(), "sample");
    accounts
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "sleep"}})),
        )
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client01.clone(), "sample");
    let pod = pods
        .create(&PostParams::default(), &from_json(json!({"metadata": {"name": "sleep-1"}, "spec": {"serviceAccountName": "sleep", "containers": [{"name": "sleep", "image": "curl"}]}})))
        .await
        .unwrap();
    let pod_uid = pod.metadata.uid.unwrap();

    let token = request_token(&accounts, "sleep", json!({"audiences": ["istio-ca"], "expirationSeconds": 3600, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "sleep-1", "uid": pod_uid}})).await;
    let status = review(&client01, &token, &["istio-ca"]).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:sample:sleep"
    );
    assert_eq!(
        status["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["sleep-1"])
    );
    assert_eq!(status["audiences"], json!(["istio-ca"]));

    let wrong_audience = review(&client01, &token, &["other"]).await;
    assert_eq!(wrong_audience["authenticated"], false);
    assert!(
        wrong_audience["error"]
            .as_str()
            .unwrap()
            .contains("audiences"),
        "{wrong_audience}"
    );

    let other_cluster = review(&client02, &token, &["istio-ca"]).await;
    assert_eq!(other_cluster["authenticated"], false);
    assert!(
        other_cluster["error"]
            .as_str()
            .unwrap()
            .contains("not a JWT this cluster signed"),
        "{other_cluster}"
    );

    let mut forged = token.clone();
    let middle = forged.len() / 2;
    forged.replace_range(
        middle..middle + 1,
        if &token[middle..middle + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    assert_eq!(
        review(&client01, &forged, &["istio-ca"]).await["authenticated"],
        false
    );

    // The token dies with the pod it is bound to.
    pods.delete("sleep-1", &DeleteParams::default())
        .await
        .unwrap();
    let after_delete = review(&client01, &token, &["istio-ca"]).await;
    assert_eq!(after_delete["authenticated"], false);
    assert!(
        after_delete["error"]
            .as_str()
            .unwrap()
            .contains("no longer exists"),
        "{after_delete}"
    );

    // A token for the API server's own audience works as a bearer token, as the account.
    let api_token = request_token(&accounts, "sleep", json!({})).await;
    let as_account = client_with_token("cluster01", &cluster01, &api_token).await;
    assert!(
        Api::<ConfigMap>::namespaced(as_account, "sample")
            .list(&ListParams::default())
            .await
            .is_ok()
    );

    // A year-long token (what a remote secret needs) is granted as asked.
    let year: TokenRequest =
        from_json(json!({"spec": {"audiences": ["x"], "expirationSeconds": 365 * 24 * 3600}}));
    let granted = accounts
        .create_subresource::<_, TokenRequest>("token", "sleep", &PostParams::default(), &year)
        .await
        .unwrap();
    assert_eq!(granted.spec.expiration_seconds, Some(365 * 24 * 3600));

    // Too short a lifetime is invalid; an unknown account is not found.
    let request: TokenRequest =
        from_json(json!({"spec": {"audiences": ["x"], "expirationSeconds": 60}}));
    let error = accounts
        .create_subresource::<_, TokenRequest>("token", "sleep", &PostParams::default(), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 422),
        "{error}"
    );
    let error = accounts
        .create_subresource::<_, TokenRequest>("token", "nobody", &PostParams::default(), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 404),
        "{error}"
    );
    cluster01.shutdown().await;
    cluster02.shutdown().await;
}

#[tokio::test]
async fn service_account_token_secrets_get_a_token_that_dies_with_the_secret() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client("cluster01", &server).await;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "istio-reader-service-account"}})),
        )
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let secret: Secret = from_json(json!({
        "metadata": {"name": "reader-token", "annotations": {"kubernetes.io/service-account.name": "istio-reader-service-account"}},
        "type": "kubernetes.io/service-account-token",
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let token = eventually(
        "the token controller to fill the secret",
        Duration::from_secs(10),
        || async {
            let secret = secrets.get("reader-token").await.ok()?;
            let token = secret.data?.get("token")?.0.clone();
            Some(String::from_utf8(token).unwrap())
        },
    )
    .await;
    let reader = client_with_token("cluster01", &server, &token).await;
    assert!(
        Api::<Pod>::all(reader.clone())
            .list(&ListParams::default())
            .await
            .is_ok()
    );
    secrets
        .delete("reader-token", &DeleteParams::default())
        .await
        .unwrap();
    let error = Api::<Pod>::all(reader)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 401),
        "{error}"
    );
    server.shutdown().await;
}

/// Sends a raw request and returns the HTTP code and the Status it answered with.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    match client.request::<Value>(request).await {
        Ok(value) => (200, value),
        Err(kube::Error::Api(status)) => (status.code, serde_json::to_value(&*status).unwrap()),
        Err(other) => panic!("{method} {path}: {other}"),
    }
}

#[tokio::test]
async fn bad_requests_get_a_status_and_change_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(config("cluster01", directory.path())).await;
    let client = client("cluster01", &server).await;
    let revision_before = server.shared().store.revision();
    let configmaps = "/api/v1/namespaces/default/configmaps";
    // (what, path, content type, body, expected code, expected message part)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            configmaps,
            "application/json",
            b"{\"metadata\": ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "malformed YAML",
            configmaps,
            "application/yaml",
            b"metadata:\n  name: [a\n".to_vec(),
            400,
            "not valid YAML",
        ),
        (
            "a list instead of an object",
            configmaps,
            "application/json",
            b"[]".to_vec(),
            400,
            "single object",
        ),
        (
            "the wrong kind",
            configmaps,
            "application/json",
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec(),
            400,
            "sent to the configmaps endpoint",
        ),
        (
            "the wrong apiVersion",
            configmaps,
            "application/json",
            br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
            400,
            "does not match the expected API version",
        ),
        (
            "a field of the wrong type",
            configmaps,
            "application/json",
            br#"{"metadata":{"name":"x"},"data":"nope"}"#.to_vec(),
            400,
            "cannot be handled as a ConfigMap",
        ),
        (
            "an invalid name",
            configmaps,
            "application/json",
            br#"{"metadata":{"name":"Not_Valid"}}"#.to_vec(),
            422,
            "metadata.name",
        ),
        (
            "no name",
            configmaps,
            "application/json",
            br#"{"metadata":{}}"#.to_vec(),
            422,
            "name or generateName is required",
        ),
        (
            "an unknown namespace",
            "/api/v1/namespaces/nowhere/configmaps",
            "application/json",
            br#"{"metadata":{"name":"x"}}"#.to_vec(),
            404,
            "namespaces \"nowhere\" not found",
        ),
        (
            "an unknown content type",
            configmaps,
            "text/plain",
            b"x".to_vec(),
            415,
            "unknown format",
        ),
        (
            "an oversized body",
            configmaps,
            "application/json",
            vec![b' '; 4 * 1024 * 1024],
            413,
            "larger than the limit",
        ),
        (
            "a protobuf body that is not one",
            configmaps,
            "application/vnd.kubernetes.protobuf",
            b"junk".to_vec(),
            400,
            "magic bytes",
        ),
    ];
    for (what, path, content_type, body, code, message) in cases {
        let (got, status) = raw(&client, "POST", path, content_type, body).await;
        assert_eq!(got, code, "{what}: {status}");
        // kube parsed the body as a Kubernetes Status: it has a reason.
        assert!(
            !status["reason"].as_str().unwrap_or("").is_empty(),
            "{what}: {status}"
        );
        assert!(
            status["message"].as_str().unwrap().contains(message),
            "{what}: {status}"
        );
    }
    let (code, status) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/none",
        "application/merge-patch+json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 404, "{status}");
    let (code, status) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default",
        "application/apply-patch+yaml",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 415, "{status}");
    for (query, message) in [
        ("limit=-1", "limit"),
        ("continue=not-a-token", "continue token"),
        ("labelSelector=app%20in%20v1", "parentheses"),
        ("fieldSelector=spec.secret%3Dx", "field label not supported"),
        ("watch=true&resourceVersion=yesterday", "resourceVersion"),
    ] {
        let path = format!("{configmaps}?{query}");
        let (code, status) = raw(&client, "GET", &path, "application/json", Vec::new()).await;
        assert_eq!(code, 400, "{query}: {status}");
        assert!(
            status["message"].as_str().unwrap().contains(message),
            "{query}: {status}"
        );
    }
    let (code, _) = raw(
        &client,
        "GET",
        "/apis/apps/v1/widgets",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = raw(
        &client,
        "DELETE",
        "/api/v1/namespaces/kube-system",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(code, 403);

    // No token and a wrong token are both 401, and neither creates anything.
    for token in ["", "not-the-admin-token"] {
        let stranger = client_with_token("cluster01", &server, token).await;
        let error = Api::<ConfigMap>::namespaced(stranger, "default")
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": "sneaky"}})),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, kube::Error::Api(ref status) if status.code == 401 && status.reason == "Unauthorized"),
            "{error}"
        );
    }
    assert_eq!(
        server.shared().store.revision(),
        revision_before,
        "a refused request changed stored data"
    );

    // A status update is checked like any object: a status of the wrong type is refused.
    let pod =
        br#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#.to_vec();
    let (code, status) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        pod,
    )
    .await;
    assert_eq!(code, 200, "{status}");
    let bad_status = br#"{"metadata":{"name":"p"},"status":"running"}"#.to_vec();
    let (code, status) = raw(
        &client,
        "PUT",
        "/api/v1/namespaces/default/pods/p/status",
        "application/json",
        bad_status,
    )
    .await;
    assert_eq!(code, 400, "{status}");

    // Conflicts: create twice, update from a stale resourceVersion.
    let configmaps_api = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let created = configmaps_api
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "once"}})),
        )
        .await
        .unwrap();
    let error = configmaps_api
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "once"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 409 && status.reason == "AlreadyExists"),
        "{error}"
    );
    let mut stale = created.clone();
    configmaps_api
        .replace("once", &PostParams::default(), &created)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    configmaps_api
        .patch(
            "once",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"a": "b"}})),
        )
        .await
        .unwrap();
    stale.data = Some([("c".to_owned(), "d".to_owned())].into());
    let error = configmaps_api
        .replace("once", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 409 && status.reason == "Conflict"),
        "{error}"
    );
    server.shutdown().await;
}
