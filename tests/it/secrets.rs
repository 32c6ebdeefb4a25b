//! SecretService against real KV v2.

use crate::support::{req, Env};
use prost_types::value::Kind;
use tonic::Code;
use vaultgate::pb::vaultgate::v1::{secret_service_client::SecretServiceClient as Client, *};

fn get(path: &str, version: u32) -> GetSecretRequest {
    GetSecretRequest { path: path.into(), version, mount: String::new() }
}

fn string_field(resp: &GetSecretResponse, name: &str) -> Option<String> {
    match resp.data.as_ref()?.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

pub async fn get_and_list(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let s = c.get_secret(req(get("billing/api-keys", 0), &env.billing)).await.expect("get").into_inner();
    assert_eq!(string_field(&s, "stripe_key").as_deref(), Some("sk_test_demo"));
    assert_eq!(s.version, 1);
    let created = s.created_time.expect("created_time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now - created.seconds).abs() < 3600, "created_time {created:?}");
    // Versions: latest and a pinned older one; explicit mount equals the default.
    let cases = [(0u32, "two", 2u32), (1, "one", 1), (2, "two", 2)];
    for (version, value, want_version) in cases {
        let r = GetSecretRequest { mount: "secret".into(), ..get("qa/multi", version) };
        let s = c.get_secret(req(r, &env.qa)).await.expect("get version").into_inner();
        assert_eq!((string_field(&s, "v").as_deref(), s.version), (Some(value), want_version), "version {version}");
    }
    let list = c
        .list_secrets(req(ListSecretsRequest { path: "billing/".into(), mount: String::new() }, &env.billing))
        .await
        .expect("list");
    assert_eq!(list.into_inner().keys, vec!["api-keys".to_string()]);
    let list = c
        .list_secrets(req(ListSecretsRequest { path: "qa".into(), mount: String::new() }, &env.qa))
        .await
        .expect("list");
    // The streams tests (concurrent) write under `qa/watch/`: the folder is listed once it exists.
    let keys = list.into_inner().keys;
    assert!(keys == ["multi"] || keys == ["multi", "watch/"], "keys under qa/: {keys:?}");
}

pub async fn error_table(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let cases: Vec<(&str, GetSecretRequest, &String, Code)> = vec![
        ("missing path", get("billing/nope", 0), &env.billing, Code::NotFound),
        ("missing version", get("qa/multi", 9), &env.qa, Code::NotFound),
        ("another caller's secret", get("reports/config", 0), &env.billing, Code::PermissionDenied),
        ("empty path", get("", 0), &env.billing, Code::InvalidArgument),
        ("dot-dot path", get("billing/../reports/config", 0), &env.billing, Code::InvalidArgument),
        ("folder, not secret", get("billing/", 0), &env.billing, Code::InvalidArgument),
        (
            "bad mount",
            GetSecretRequest { mount: "a b".into(), ..get("billing/api-keys", 0) },
            &env.billing,
            Code::InvalidArgument,
        ),
    ];
    for (name, r, jwt, code) in cases {
        let status = c.get_secret(req(r, jwt)).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(!status.message().contains("sk_test_demo"));
    }
    let status = c
        .list_secrets(req(ListSecretsRequest { path: "reports/".into(), mount: String::new() }, &env.billing))
        .await
        .expect_err("list another caller's folder");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = c
        .list_secrets(req(ListSecretsRequest { path: "billing/empty/".into(), mount: String::new() }, &env.billing))
        .await
        .expect_err("list a missing folder");
    assert_eq!(status.code(), Code::NotFound);
}
