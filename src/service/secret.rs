//! `vaultgate.v1.SecretService` over KV version 2: read a secret version, list a folder. Both
//! read through the gateway's cache (`cache.rs`: per token, singleflight, stale while Vault
//! cannot answer).

mod watch;

pub use watch::Watched;

use super::{age, rpc, Described, Gateway};
use crate::cache::{self, Read, Value as Cached};
use crate::rules::Resource;
use crate::{
    call::Rpc,
    error::{Error, Subject},
    pb::vaultgate::v1::{secret_service_server::SecretService, *},
};
use prost_types::{value::Kind, ListValue, Struct, Timestamp, Value};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The KV v2-backed secret service.
pub struct Secrets(pub Arc<Gateway>);

impl Gateway {
    /// The KV mount a checked request names, or the configured default.
    fn kv_mount<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.is_empty() {
            return &self.config.mounts.kv;
        }
        requested
    }
}

/// Converts JSON to the protobuf `Value` that `google.protobuf.Struct` holds.
fn to_value(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(to_value).collect() }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_timestamp(rfc3339: &str) -> Option<Timestamp> {
    let t = humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z')).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(Timestamp { seconds: i64::try_from(d.as_secs()).ok()?, nanos: i32::try_from(d.subsec_nanos()).ok()? })
}

impl Described for GetSecretRequest {
    const RPC: &'static Rpc = rpc!("SecretService", "GetSecret", Secret);
    fn target(&self) -> (&str, usize) {
        (&self.path, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Secret { mount: &self.mount, path: &self.path })
    }
}

impl Described for ListSecretsRequest {
    const RPC: &'static Rpc = rpc!("SecretService", "ListSecrets", Secret);
    fn target(&self) -> (&str, usize) {
        (&self.path, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Secret { mount: &self.mount, path: &self.path })
    }
}

impl Described for WatchSecretRequest {
    const RPC: &'static Rpc = rpc!("SecretService", "WatchSecret", Secret, stream);
    fn target(&self) -> (&str, usize) {
        (&self.path, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Secret { mount: &self.mount, path: &self.path })
    }
}

impl crate::stream::Heartbeat for WatchSecretResponse {
    fn heartbeat() -> Self {
        WatchSecretResponse { heartbeat: true, ..Default::default() }
    }
}

#[tonic::async_trait]
impl SecretService for Secrets {
    type WatchSecretStream = crate::stream::Outgoing<WatchSecretResponse>;

    async fn watch_secret(
        &self,
        req: Request<WatchSecretRequest>,
    ) -> Result<Response<Self::WatchSecretStream>, Status> {
        let gw = &self.0;
        gw.serve_stream(req, |actor, r, out| {
            let mount = gw.kv_mount(&r.mount).to_string();
            gw.clone().watch_secret(actor, mount, r.path.clone(), out)
        })
        .await
    }

    async fn get_secret(&self, req: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, _deadline, r| async move {
            let mount = gw.kv_mount(&r.mount);
            let key = cache::Key::new(&actor.token, Read::Secret, mount, &r.path, r.version);
            let (vault, token, m, path, version) =
                (gw.vault.clone(), actor.token.clone(), mount.to_string(), r.path.clone(), r.version);
            // The read runs for every waiter of the flight, so it is bounded by the KV timeout
            // rather than by this caller's deadline (which still bounds this caller's wait).
            let served = gw
                .cached(&actor, key, move || async move {
                    vault.kv_read(&token, &m, &path, version, None).await.map(Cached::Secret)
                })
                .await
                .map_err(|e| match Error::from_vault(e, Subject::Secret(&r.path)) {
                    Error::NotFound(_) if r.version > 0 => {
                        Error::NotFound(format!("secret {:?} has no readable version {}", r.path, r.version))
                    }
                    other => other,
                })?;
            let Cached::Secret(secret) = &*served.value else {
                return Err(Error::Internal("cached answer of another kind".into()));
            };
            Ok(GetSecretResponse {
                data: secret.data.clone().map(to_struct),
                version: secret.metadata.version,
                created_time: to_timestamp(&secret.metadata.created_time),
                stale: served.stale,
                age: age(served.age),
            })
        })
        .await
    }

    async fn list_secrets(&self, req: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, _deadline, r| async move {
            let mount = gw.kv_mount(&r.mount);
            let key = cache::Key::new(&actor.token, Read::List, mount, &r.path, 0);
            let (vault, token, m, path) = (gw.vault.clone(), actor.token.clone(), mount.to_string(), r.path.clone());
            let served =
                gw.cached(&actor, key, move || async move {
                    vault.kv_list(&token, &m, &path, None).await.map(Cached::List)
                })
                .await
                .map_err(|e| Error::from_vault(e, Subject::Secret(&r.path)))?;
            let Cached::List(keys) = &*served.value else {
                return Err(Error::Internal("cached answer of another kind".into()));
            };
            Ok(ListSecretsResponse { keys: keys.clone(), stale: served.stale, age: age(served.age) })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_timestamps_parse() {
        let t = to_timestamp("2026-11-28T12:44:45.123456789Z").unwrap();
        assert_eq!(t.seconds, 1_795_869_885);
        assert_eq!(t.nanos, 123_456_789);
        assert!(to_timestamp("yesterday").is_none());
    }

    #[test]
    fn json_becomes_struct() {
        let json = serde_json::json!({"a": "x", "n": 2, "l": [true, null], "o": {"k": "v"}});
        let s = match json {
            serde_json::Value::Object(o) => to_struct(o),
            _ => unreachable!(),
        };
        assert_eq!(s.fields["a"].kind, Some(Kind::StringValue("x".into())));
        assert_eq!(s.fields["n"].kind, Some(Kind::NumberValue(2.0)));
        assert!(matches!(s.fields["o"].kind, Some(Kind::StructValue(_))));
    }
}
