//! `vaultgate.v1.SecretService` over KV version 2: read a secret version, list a folder.

use super::{rpc, Described, Gateway};
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

#[tonic::async_trait]
impl SecretService for Secrets {
    async fn get_secret(&self, req: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let mount = gw.kv_mount(&r.mount);
            let secret = gw.vault.kv_read(&actor.token, mount, &r.path, r.version, deadline).await.map_err(|e| {
                match Error::from_vault(e, Subject::Secret(&r.path)) {
                    Error::NotFound(_) if r.version > 0 => {
                        Error::NotFound(format!("secret {:?} has no readable version {}", r.path, r.version))
                    }
                    other => other,
                }
            })?;
            Ok(GetSecretResponse {
                data: secret.data.map(to_struct),
                version: secret.metadata.version,
                created_time: to_timestamp(&secret.metadata.created_time),
            })
        })
        .await
    }

    async fn list_secrets(&self, req: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let mount = gw.kv_mount(&r.mount);
            let keys = gw
                .vault
                .kv_list(&actor.token, mount, &r.path, deadline)
                .await
                .map_err(|e| Error::from_vault(e, Subject::Secret(&r.path)))?;
            Ok(ListSecretsResponse { keys })
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
