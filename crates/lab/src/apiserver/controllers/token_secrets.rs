//! Tokens for `kubernetes.io/service-account-token` Secrets, as Kubernetes' token controller
//! fills them in: `data.token` (a token bound to the Secret), `ca.crt` and `namespace`.

use serde_json::json;

use super::super::metadata::now;
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::store::StoredObject;
use super::super::tokens::{Binding, Claims, ISSUER, ObjectRef};
use super::super::writes;
use super::Kinds;

const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
const ACCOUNT_NAME: &str = "kubernetes.io/service-account.name";
/// Tokens of service-account token Secrets live as long as the Secret (ten years here).
const SECRET_TOKEN_SECONDS: i64 = 10 * 365 * 24 * 3600;

pub(super) fn fill(state: &ApiState, kinds: &Kinds, secret: &StoredObject) {
    use base64::Engine;
    let fields = &secret.object.data;
    if fields["type"] != SERVICE_ACCOUNT_TOKEN || !fields["data"]["token"].is_null() {
        return;
    }
    let namespace = secret.namespace();
    let name = secret.name();
    let annotations = secret.object.metadata.annotations.as_ref();
    let Some(account_name) = annotations.and_then(|annotations| annotations.get(ACCOUNT_NAME))
    else {
        return;
    };
    let Some(account) = state.store.get(kinds.accounts, namespace, account_name) else {
        tracing::info!(%namespace, secret = %name, account = %account_name, "the service account of a token secret does not exist yet");
        return;
    };
    let binding = Binding {
        namespace: namespace.to_owned(),
        serviceaccount: ObjectRef {
            name: account_name.clone(),
            uid: account.uid().to_owned(),
        },
        pod: None,
        secret: Some(ObjectRef {
            name: name.to_owned(),
            uid: secret.uid().to_owned(),
        }),
    };
    let issued_at = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = state.tokens.sign(&Claims::new(
        binding,
        vec![ISSUER.to_owned()],
        issued_at,
        SECRET_TOKEN_SECONDS,
    ));
    let encode = |text: &str| json!(base64::engine::general_purpose::STANDARD.encode(text));
    let target = Target::object(kinds.secrets, namespace, name);
    let result = writes::update(state, &target, |current| {
        let data = &mut current.data["data"];
        if !data["token"].is_null() {
            return false;
        }
        if !data.is_object() {
            *data = json!({});
        }
        data["token"] = encode(&token);
        data["ca.crt"] = encode(&state.ca_pem);
        data["namespace"] = encode(namespace);
        let annotations = current.metadata.annotations.get_or_insert_default();
        annotations.insert(
            "kubernetes.io/service-account.uid".into(),
            account.uid().to_owned(),
        );
        annotations.insert("causeway.dev/token-issued".into(), now());
        true
    });
    if let Err(error) = result
        && error.reason != "NotFound"
    {
        tracing::warn!(%namespace, secret = %name, %error, "cannot fill in a service-account token");
    }
}
