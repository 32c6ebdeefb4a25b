//! `vaultgate.v1.EncryptionService` over Transit: single calls (Encrypt, Decrypt, Rewrap, Sign,
//! Verify, Hmac, VerifyHmac) go through the coalescer, explicit batches (EncryptBatch,
//! DecryptBatch, RewrapBatch) are split to fit Vault's limits and answered in order, one result
//! per item. Decrypt answers say whether the ciphertext's key version is behind the key's latest,
//! from the key-version cache (`key_versions.rs`), never from an extra Vault call per call. A signature or HMAC that does not match is
//! `valid = false`; a malformed one is `INVALID_ARGUMENT`.

use super::{age, rpc, validate, Described, Gateway};
use crate::cache::{self, Read, Value as Cached};
use crate::rules::Resource;
use crate::{
    batch::{self, Budget, LaneKey},
    bind,
    call::Rpc,
    error::{Error, Subject},
    key_versions,
    pb::vaultgate::v1::{encryption_service_server::EncryptionService, *},
    session::Actor,
    vault::transit::{b64, unb64, BatchItem, BatchResult, DatakeyBody, Endpoint, Op},
    vault::VaultError,
};
use std::sync::Arc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The Transit-backed encryption service.
pub struct Encryption(pub Arc<Gateway>);

fn opt_b64(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| b64(bytes))
}

impl Gateway {
    /// `item`: the index inside a batch request, which field names in errors are prefixed with.
    /// `actor`: whose associated data it is (`bind.rs`).
    fn encrypt_item(
        &self,
        actor: &Actor,
        item: Option<usize>,
        plaintext: &[u8],
        context: &[u8],
        aad: &[u8],
        version: u32,
    ) -> Result<BatchItem, Error> {
        validate::encrypt_item(&self.config.limits, plaintext, context, aad).map_err(|e| e.in_item(item))?;
        let aad = bind::associated_data(actor, aad).map_err(|e| e.in_item(item))?;
        Ok(BatchItem {
            plaintext: Some(b64(plaintext)),
            context: opt_b64(context),
            associated_data: opt_b64(&aad),
            key_version: (version > 0).then_some(version),
            ..Default::default()
        })
    }

    /// `actor`, `item`: as for [`Gateway::encrypt_item`].
    fn decrypt_item(
        &self,
        actor: &Actor,
        item: Option<usize>,
        ciphertext: &str,
        context: &[u8],
        aad: &[u8],
    ) -> Result<BatchItem, Error> {
        validate::decrypt_item(&self.config.limits, ciphertext, context, aad).map_err(|e| e.in_item(item))?;
        let aad = bind::associated_data(actor, aad).map_err(|e| e.in_item(item))?;
        Ok(BatchItem {
            ciphertext: Some(ciphertext.to_string()),
            context: opt_b64(context),
            associated_data: opt_b64(&aad),
            ..Default::default()
        })
    }

    /// One ciphertext to rewrap (a Rewrap call or a RewrapBatch item); `item` as for
    /// [`Gateway::encrypt_item`]. Transit's rewrap takes no associated data.
    /// A caller whose rule sets `bind_identity` has only ciphertexts with associated data, which
    /// Transit cannot rewrap: refused before Vault.
    fn rewrap_item(
        &self,
        actor: &Actor,
        item: Option<usize>,
        ciphertext: &str,
        context: &[u8],
    ) -> Result<BatchItem, Error> {
        validate::decrypt_item(&self.config.limits, ciphertext, context, &[]).map_err(|e| e.in_item(item))?;
        if actor.bind_identity {
            return Err(Error::InvalidArgument(
                "this caller's ciphertexts are bound to its identity (bind_identity) through associated data, \
                 which Transit's rewrap cannot take: Decrypt and Encrypt again to move to the latest key version"
                    .into(),
            ));
        }
        Ok(BatchItem { ciphertext: Some(ciphertext.to_string()), context: opt_b64(context), ..Default::default() })
    }

    /// What a decryption with `actor`'s token of a ciphertext of `version` says about rotation,
    /// given the latest version its key-version entry knew (`known`): (`rewrap_recommended`,
    /// `latest_version`). A version newer than `known` tells the entry the key moved.
    fn advice(&self, actor: &Actor, mount: &str, key: &str, version: u32, known: Option<u32>) -> (bool, u32) {
        if known.is_some_and(|latest| version > latest) {
            self.key_versions.saw(&actor.token, mount, key, version);
        }
        key_versions::advice(version, known)
    }

    /// The Transit mount a request names, or the configured default (`mounts.transit`).
    fn transit_mount<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.is_empty() {
            &self.config.mounts.transit
        } else {
            requested
        }
    }

    /// One single-call item (Encrypt, Decrypt, Sign, Verify, Hmac, VerifyHmac): coalesced with
    /// concurrent ones of its lane, or alone when batching is off. `algorithm`: the hash
    /// algorithm of sign/verify/hmac (part of the lane's shape).
    // The request's mount joined the lane's parts (mount, op, key, algorithm): one argument each.
    #[allow(clippy::too_many_arguments)]
    async fn transit_one(
        &self,
        actor: &Actor,
        mount: &str,
        op: Op,
        key: &str,
        algorithm: Option<&'static str>,
        item: BatchItem,
        deadline: Option<Instant>,
    ) -> Result<BatchResult, Error> {
        let result = match &self.coalescer {
            Some(c) => {
                c.submit(LaneKey::new(actor.token.clone(), mount, key, op, algorithm, &item), item, deadline).await?
            }
            // Boxed: only with batching off; the coalesced path should not carry its size.
            None => {
                let at = Endpoint { mount, op, key, algorithm };
                Box::pin(self.vault.transit_single(&actor.token, at, &item, deadline))
                    .await
                    .map_err(|e| Error::from_vault(e, Subject::Key(key)))?
            }
        };
        match &result.error {
            Some(msg) => Err(Error::from_transit_item(msg, key)),
            None => Ok(result),
        }
    }

    /// An explicit batch: items that passed validation are sent in chunks that fit Vault's
    /// limits; the answer has one entry per input item, in order.
    async fn transit_many(
        &self,
        actor: &Actor,
        mount: &str,
        op: Op,
        key: &str,
        items: Vec<Result<BatchItem, Error>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Result<BatchResult, Error>>, Error> {
        let mut out: Vec<Option<Result<BatchResult, Error>>> = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    valid.push(item);
                    positions.push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        for (n, range) in batch::plan(&valid, Budget::from(&self.config.batch)).into_iter().enumerate() {
            let at = Endpoint { mount, op, key, algorithm: None };
            let answer = self.vault.transit_batch(&actor.token, at, &valid[range.clone()], deadline).await;
            match answer {
                // Vault refused the first request whole (403): nothing was done yet, so the call
                // fails whole and Gateway::serve can check whether the token is gone and retry.
                Err(e) if n == 0 && matches!(e, VaultError::Api { status: 403, .. }) => {
                    return Err(Error::from_vault(e, Subject::Key(key)));
                }
                Ok(results) => {
                    for (pos, result) in positions[range].iter().zip(results) {
                        out[*pos] = Some(match &result.error {
                            Some(msg) => Err(Error::from_transit_item(msg, key)),
                            None => Ok(result),
                        });
                    }
                }
                Err(e) => {
                    let err = Error::from_vault(e, Subject::Key(key));
                    for pos in &positions[range] {
                        out[*pos] = Some(Err(err.clone()));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("batch item left unanswered".into()))))
            .collect())
    }
}

fn ciphertext_of(result: BatchResult) -> Result<(String, u32), Error> {
    let ct = result.ciphertext.ok_or_else(|| Error::Internal("Transit answered without a ciphertext".into()))?;
    let version = result.key_version.or_else(|| validate::ciphertext_version(&ct)).unwrap_or(0);
    Ok((ct, version))
}

fn plaintext_of(result: BatchResult) -> Result<Vec<u8>, Error> {
    let b = result.plaintext.ok_or_else(|| Error::Internal("Transit answered without a plaintext".into()))?;
    unb64(&b).map_err(|_| Error::Internal("Transit answered with a plaintext that is not base64".into()))
}

/// A Vault signature or HMAC with its key version (Vault sends none with an HMAC: read from
/// the `vault:vN:` prefix).
fn signed_of(result: BatchResult, value: Option<String>, what: &str) -> Result<(String, u32), Error> {
    let value = value.ok_or_else(|| Error::Internal(format!("Transit answered without a {what}")))?;
    let version = result.key_version.filter(|v| *v > 0).or_else(|| validate::ciphertext_version(&value)).unwrap_or(0);
    Ok((value, version))
}

/// The item of a sign/hmac/verify call: the base64 input (always sent, even when empty).
fn input_item(input: &[u8], context: &[u8]) -> BatchItem {
    BatchItem { input: Some(b64(input)), context: opt_b64(context), ..Default::default() }
}

fn item_status(err: &Error) -> Option<crate::pb::google::rpc::Status> {
    Some(err.into())
}

impl Described for EncryptRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "Encrypt", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for DecryptRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "Decrypt", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for EncryptBatchRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "EncryptBatch", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, self.items.len())
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for DecryptBatchRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "DecryptBatch", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, self.items.len())
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for RewrapRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "Rewrap", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for RewrapBatchRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "RewrapBatch", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, self.items.len())
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for WatchKeyRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "WatchKey", Key, stream);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl crate::stream::Heartbeat for WatchKeyResponse {
    fn heartbeat() -> WatchKeyResponse {
        WatchKeyResponse { heartbeat: true, ..Default::default() }
    }
}

impl Gateway {
    /// WatchKey's producer: what the key-version entry of (`actor`'s token, `mount`, `key`)
    /// knows, now and on every change, until the token may no longer read the key.
    async fn watch_key(
        self: Arc<Self>,
        actor: Actor,
        mount: String,
        key: String,
        out: crate::stream::Sender<WatchKeyResponse>,
    ) -> Result<(), Error> {
        let mut known = self.key_versions.watch(&actor.token, &mount, &key)?;
        drop(self);
        loop {
            let now = known.borrow_and_update().clone();
            match now {
                // Not read yet, or Vault did not answer the first read: the next poll tells.
                key_versions::Known::Pending | key_versions::Known::Unknown => {}
                key_versions::Known::Key(info) => {
                    out.send(WatchKeyResponse {
                        r#type: info.key_type,
                        latest_version: info.latest_version,
                        min_decryption_version: info.min_decryption_version,
                        min_encryption_version: info.min_encryption_version,
                        derived: info.derived,
                        heartbeat: false,
                    })
                    .await?
                }
                key_versions::Known::Refused(err) => return Err(err),
            }
            if known.changed().await.is_err() {
                return Err(Error::Unavailable("the key's version poller stopped; watch again".into()));
            }
        }
    }
}

impl Described for RotateRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "Rotate", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for GetKeyRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "GetKey", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

impl Described for GenerateDataKeyRequest {
    const RPC: &'static Rpc = rpc!("EncryptionService", "GenerateDataKey", Key);
    fn target(&self) -> (&str, usize) {
        (&self.key, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::Key { mount: &self.mount, key: &self.key })
    }
}

/// Sign, Verify, Hmac and VerifyHmac act on a Transit key, as Encrypt does.
macro_rules! described_by_key {
    ($($message:ident => $name:literal),* $(,)?) => {$(
        impl Described for $message {
            const RPC: &'static Rpc = rpc!("EncryptionService", $name, Key);
            fn target(&self) -> (&str, usize) {
                (&self.key, 1)
            }
            fn resource(&self) -> Option<Resource<'_>> {
                Some(Resource::Key { mount: &self.mount, key: &self.key })
            }
        }
    )*};
}

described_by_key!(SignRequest => "Sign", VerifyRequest => "Verify", HmacRequest => "Hmac", VerifyHmacRequest => "VerifyHmac");

#[tonic::async_trait]
impl EncryptionService for Encryption {
    async fn encrypt(&self, req: Request<EncryptRequest>) -> Result<Response<EncryptResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let item = gw.encrypt_item(&actor, None, &r.plaintext, &r.context, &r.associated_data, r.key_version)?;
            let (ciphertext, key_version) = ciphertext_of(
                gw.transit_one(&actor, gw.transit_mount(&r.mount), Op::Encrypt, &r.key, None, item, deadline).await?,
            )?;
            Ok(EncryptResponse { ciphertext, key_version })
        })
        .await
    }

    async fn decrypt(&self, req: Request<DecryptRequest>) -> Result<Response<DecryptResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let item = gw.decrypt_item(&actor, None, &r.ciphertext, &r.context, &r.associated_data)?;
            let key_version = validate::ciphertext_version(&r.ciphertext).unwrap_or(0);
            let mount = gw.transit_mount(&r.mount);
            // The key's versions come from the cache; only an entry's first read is waited for,
            // and it runs alongside the decryption.
            let (result, known) = tokio::join!(
                gw.transit_one(&actor, mount, Op::Decrypt, &r.key, None, item, deadline),
                gw.key_versions.latest(&actor.token, mount, &r.key, deadline),
            );
            let plaintext = plaintext_of(result?)?;
            let (rewrap_recommended, latest_version) = gw.advice(&actor, mount, &r.key, key_version, known);
            Ok(DecryptResponse { plaintext, key_version, rewrap_recommended, latest_version })
        })
        .await
    }

    async fn encrypt_batch(&self, req: Request<EncryptBatchRequest>) -> Result<Response<EncryptBatchResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let items = r
                .items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    gw.encrypt_item(&actor, Some(i), &it.plaintext, &it.context, &it.associated_data, it.key_version)
                })
                .collect();
            let results = gw
                .transit_many(&actor, gw.transit_mount(&r.mount), Op::Encrypt, &r.key, items, deadline)
                .await?
                .into_iter()
                .map(|res| match res.and_then(ciphertext_of) {
                    Ok((ciphertext, key_version)) => EncryptBatchResult { ciphertext, key_version, error: None },
                    Err(e) => EncryptBatchResult { ciphertext: String::new(), key_version: 0, error: item_status(&e) },
                })
                .collect();
            Ok(EncryptBatchResponse { results })
        })
        .await
    }

    async fn decrypt_batch(&self, req: Request<DecryptBatchRequest>) -> Result<Response<DecryptBatchResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let items = r
                .items
                .iter()
                .enumerate()
                .map(|(i, it)| gw.decrypt_item(&actor, Some(i), &it.ciphertext, &it.context, &it.associated_data))
                .collect();
            let mount = gw.transit_mount(&r.mount);
            let (results, known) = tokio::join!(
                gw.transit_many(&actor, mount, Op::Decrypt, &r.key, items, deadline),
                gw.key_versions.latest(&actor.token, mount, &r.key, deadline),
            );
            // The version that encrypted each item, as Decrypt answers (the item passed the check).
            let versions: Vec<u32> =
                r.items.iter().map(|item| validate::ciphertext_version(&item.ciphertext).unwrap_or(0)).collect();
            let results: Vec<_> = results?.into_iter().map(|res| res.and_then(plaintext_of)).collect();
            let newest = results.iter().zip(&versions).filter(|(res, _)| res.is_ok()).map(|(_, v)| *v).max();
            gw.advice(&actor, mount, &r.key, newest.unwrap_or(0), known);
            let results = results
                .into_iter()
                .zip(versions)
                .map(|(res, key_version)| match res {
                    Ok(plaintext) => {
                        let (rewrap_recommended, latest_version) = key_versions::advice(key_version, known);
                        DecryptBatchResult { plaintext, key_version, error: None, rewrap_recommended, latest_version }
                    }
                    Err(e) => DecryptBatchResult { error: item_status(&e), ..Default::default() },
                })
                .collect();
            Ok(DecryptBatchResponse { results })
        })
        .await
    }

    async fn rewrap(&self, req: Request<RewrapRequest>) -> Result<Response<RewrapResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let item = gw.rewrap_item(&actor, None, &r.ciphertext, &r.context)?;
            let (ciphertext, key_version) = ciphertext_of(
                gw.transit_one(&actor, gw.transit_mount(&r.mount), Op::Rewrap, &r.key, None, item, deadline).await?,
            )?;
            Ok(RewrapResponse { ciphertext, key_version })
        })
        .await
    }

    async fn rewrap_batch(&self, req: Request<RewrapBatchRequest>) -> Result<Response<RewrapBatchResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let items =
                r.items.iter().enumerate().map(|(i, it)| gw.rewrap_item(&actor, Some(i), &it.ciphertext, &it.context));
            let results = gw
                .transit_many(&actor, gw.transit_mount(&r.mount), Op::Rewrap, &r.key, items.collect(), deadline)
                .await?
                .into_iter()
                .map(|res| match res.and_then(ciphertext_of) {
                    Ok((ciphertext, key_version)) => RewrapBatchResult { ciphertext, key_version, error: None },
                    Err(e) => RewrapBatchResult { error: item_status(&e), ..Default::default() },
                })
                .collect();
            Ok(RewrapBatchResponse { results })
        })
        .await
    }

    type WatchKeyStream = crate::stream::Outgoing<WatchKeyResponse>;

    async fn watch_key(&self, req: Request<WatchKeyRequest>) -> Result<Response<Self::WatchKeyStream>, Status> {
        let gw = &self.0;
        gw.serve_stream(req, |actor, r, out| {
            let mount = gw.transit_mount(&r.mount).to_string();
            gw.clone().watch_key(actor, mount, r.key.clone(), out)
        })
        .await
    }

    async fn rotate(&self, req: Request<RotateRequest>) -> Result<Response<RotateResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let key = &r.key;
            let info = gw
                .vault
                .transit_rotate(&actor.token, gw.transit_mount(&r.mount), key, deadline)
                .await
                .map_err(|e| Error::from_vault(e, Subject::Key(key)))?;
            // Every caller's cached GetKey answer of this key is out of date now, and every
            // key-version poller of it reads again (each with its own token).
            gw.cache.forget(Read::Key, gw.transit_mount(&r.mount), key);
            gw.key_versions.rotated(gw.transit_mount(&r.mount), key);
            tracing::info!(caller = %actor.caller, key = %key, version = info.latest_version, "key rotated");
            Ok(RotateResponse { latest_version: info.latest_version })
        })
        .await
    }

    async fn get_key(&self, req: Request<GetKeyRequest>) -> Result<Response<GetKeyResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, _deadline, r| async move {
            let key = &r.key;
            let mount = gw.transit_mount(&r.mount);
            let cache_key = cache::Key::new(&actor.token, Read::Key, mount, key, 0);
            let (vault, token, m, k) = (gw.vault.clone(), actor.token.clone(), mount.to_string(), key.clone());
            let served = gw
                .cached(&actor, cache_key, move || async move {
                    vault.transit_read_key(&token, &m, &k, None).await.map(Cached::Key)
                })
                .await
                .map_err(|e| Error::from_vault(e, Subject::Key(key)))?;
            let Cached::Key(info) = &*served.value else {
                return Err(Error::Internal("cached answer of another kind".into()));
            };
            Ok(GetKeyResponse {
                r#type: info.key_type.clone(),
                latest_version: info.latest_version,
                min_decryption_version: info.min_decryption_version,
                min_encryption_version: info.min_encryption_version,
                derived: info.derived,
                stale: served.stale,
                age: age(served.age),
            })
        })
        .await
    }

    async fn generate_data_key(
        &self,
        req: Request<GenerateDataKeyRequest>,
    ) -> Result<Response<GenerateDataKeyResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let bits = validate::data_key_bits(r.bits)?;
            // Bound to the caller like an Encrypt, so its Decrypt of the wrapped key succeeds.
            let aad = bind::associated_data(&actor, &[])?;
            let body = DatakeyBody { context: opt_b64(&r.context), associated_data: opt_b64(&aad), bits };
            let out = gw
                .vault
                .transit_datakey(&actor.token, gw.transit_mount(&r.mount), &r.key, &body, deadline)
                .await
                .map_err(|e| Error::from_vault(e, Subject::Key(&r.key)))?;
            let plaintext = out
                .plaintext
                .as_deref()
                .map(unb64)
                .transpose()
                .map_err(|_| Error::Internal("datakey plaintext is not base64".into()))?
                .ok_or_else(|| Error::Internal("datakey answer without plaintext".into()))?;
            Ok(GenerateDataKeyResponse { plaintext, ciphertext: out.ciphertext, key_version: out.key_version })
        })
        .await
    }

    async fn sign(&self, req: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let algorithm = validate::hash_algorithm("hash_algorithm", &r.hash_algorithm, false)?;
            let item = input_item(&r.input, &r.context);
            let mut result =
                gw.transit_one(&actor, gw.transit_mount(&r.mount), Op::Sign, &r.key, algorithm, item, deadline).await?;
            let value = result.signature.take();
            let (signature, key_version) = signed_of(result, value, "signature")?;
            Ok(SignResponse { signature, key_version })
        })
        .await
    }

    async fn verify(&self, req: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let algorithm = validate::hash_algorithm("hash_algorithm", &r.hash_algorithm, false)?;
            let item = BatchItem { signature: Some(r.signature.clone()), ..input_item(&r.input, &r.context) };
            let result = gw
                .transit_one(&actor, gw.transit_mount(&r.mount), Op::Verify, &r.key, algorithm, item, deadline)
                .await?;
            Ok(VerifyResponse { valid: result.valid == Some(true) })
        })
        .await
    }

    async fn hmac(&self, req: Request<HmacRequest>) -> Result<Response<HmacResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let algorithm = validate::hash_algorithm("algorithm", &r.algorithm, true)?;
            let item = input_item(&r.input, &[]);
            let mut result =
                gw.transit_one(&actor, gw.transit_mount(&r.mount), Op::Hmac, &r.key, algorithm, item, deadline).await?;
            let value = result.hmac.take();
            let (hmac, key_version) = signed_of(result, value, "HMAC")?;
            Ok(HmacResponse { hmac, key_version })
        })
        .await
    }

    async fn verify_hmac(&self, req: Request<VerifyHmacRequest>) -> Result<Response<VerifyHmacResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let algorithm = validate::hash_algorithm("algorithm", &r.algorithm, true)?;
            let item = BatchItem { hmac: Some(r.hmac.clone()), ..input_item(&r.input, &[]) };
            let result = gw
                .transit_one(&actor, gw.transit_mount(&r.mount), Op::VerifyHmac, &r.key, algorithm, item, deadline)
                .await?;
            Ok(VerifyHmacResponse { valid: result.valid == Some(true) })
        })
        .await
    }
}
