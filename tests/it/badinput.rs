//! Bad input, table-driven: raw request bytes (so that invalid UTF-8, truncated messages and
//! unknown fields can be sent at all) against a gateway with small limits. Every row gets its
//! documented code and a message naming what to fix; no row panics the gateway or hangs.

use crate::support::{req, serve_gateway, Env};
use bytes::{Buf, BufMut};
use prost::Message;
use std::time::Duration;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
    Code, Status,
};
use vaultgate::pb::vaultgate::v1::*;

/// A codec that sends and receives message bytes as they are.
#[derive(Clone, Copy, Default)]
pub(crate) struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Upper bound of one call: a row that takes longer hangs.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `body` to `path` as the `qa` caller, with an optional deadline; panics if it hangs.
async fn call(
    ch: &Channel,
    env: &Env,
    path: &'static str,
    body: Vec<u8>,
    deadline: Option<Duration>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    let mut r = req(body, &env.qa);
    if let Some(d) = deadline {
        r.set_timeout(d);
    }
    let sent = async {
        grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        grpc.unary(r, PathAndQuery::from_static(path), Raw).await.map(tonic::Response::into_inner)
    };
    tokio::time::timeout(CALL_TIMEOUT, sent).await.unwrap_or_else(|_| panic!("{path} hung for {CALL_TIMEOUT:?}"))
}

/// One length-delimited protobuf field: tag, length, bytes.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

const ENCRYPT: &str = "/vaultgate.v1.EncryptionService/Encrypt";
const DECRYPT: &str = "/vaultgate.v1.EncryptionService/Decrypt";
const ENCRYPT_BATCH: &str = "/vaultgate.v1.EncryptionService/EncryptBatch";
const DECRYPT_BATCH: &str = "/vaultgate.v1.EncryptionService/DecryptBatch";
const GET_SECRET: &str = "/vaultgate.v1.SecretService/GetSecret";
const REWRAP_BATCH: &str = "/vaultgate.v1.EncryptionService/RewrapBatch";
const SIGN: &str = "/vaultgate.v1.EncryptionService/Sign";
const VERIFY: &str = "/vaultgate.v1.EncryptionService/Verify";
const HMAC: &str = "/vaultgate.v1.EncryptionService/Hmac";
const VERIFY_HMAC: &str = "/vaultgate.v1.EncryptionService/VerifyHmac";
const ISSUE_CERT: &str = "/vaultgate.v1.PkiService/IssueCertificate";
const SIGN_CERT: &str = "/vaultgate.v1.PkiService/SignCertificate";
const REVOKE_CERT: &str = "/vaultgate.v1.PkiService/RevokeCertificate";
const CA_CHAIN: &str = "/vaultgate.v1.PkiService/GetCaChain";

fn enc(plaintext: &[u8]) -> Vec<u8> {
    EncryptRequest { key: "qa-aes".into(), plaintext: plaintext.to_vec(), ..Default::default() }.encode_to_vec()
}

fn dec(ciphertext: &str) -> Vec<u8> {
    DecryptRequest { key: "qa-aes".into(), ciphertext: ciphertext.into(), ..Default::default() }.encode_to_vec()
}

/// One row: what is sent, with which deadline, the codes it may get and what its message says.
struct Row {
    name: &'static str,
    path: &'static str,
    body: Vec<u8>,
    deadline: Option<Duration>,
    codes: &'static [Code],
    says: &'static str,
    /// Another answer the row may get (tonic's transport, not the gateway).
    or: Option<(Code, &'static str)>,
}

fn row(name: &'static str, path: &'static str, body: Vec<u8>, code: &'static [Code], says: &'static str) -> Row {
    Row { name, path, body, deadline: None, codes: code, says, or: None }
}

const INVALID: &[Code] = &[Code::InvalidArgument];

pub async fn bad_input_table(env: &'static Env) {
    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n\
         [limits]\nmax_item_bytes = 1024\nmax_batch_items = 10\nmax_message_bytes = 32768\n",
        env.vault_addr
    ))
    .await;
    let ch = own.channel.clone();
    let good = call(&ch, env, ENCRYPT, enc(b"bad-input probe"), None).await.expect("a good call");
    let ct = EncryptResponse::decode(good.as_slice()).expect("EncryptResponse").ciphertext;
    let body = ct.strip_prefix("vault:v1:").expect("a v1 ciphertext");

    let batch = |n: usize, plaintext: &[u8]| {
        let items = vec![EncryptBatchItem { plaintext: plaintext.to_vec(), ..Default::default() }; n];
        EncryptBatchRequest { key: "qa-aes".into(), items, ..Default::default() }.encode_to_vec()
    };
    let mut big_item = EncryptBatchRequest::decode(batch(5, b"x").as_slice()).expect("decode");
    big_item.items[3].plaintext = vec![7; 1025];
    let non_utf8_item = [field(1, b"qa-aes"), field(2, &field(1, b"vault:v1:\xc3\x28"))].concat();
    let mut unknown = enc(b"with unknown fields");
    unknown.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
    unknown.extend(field(100, b"from a newer client"));

    let rows = vec![
        // Empty.
        row("empty Encrypt", ENCRYPT, vec![], INVALID, "key: must not be empty"),
        row("empty Decrypt", DECRYPT, vec![], INVALID, "key: must not be empty"),
        row("empty ciphertext", DECRYPT, dec(""), INVALID, "ciphertext: must not be empty"),
        row("no batch items", ENCRYPT_BATCH, batch(0, b""), INVALID, "items: must hold at least one item"),
        row("empty GetSecret", GET_SECRET, vec![], INVALID, "path: must not be empty"),
        // Huge.
        row(
            "plaintext over max_item_bytes",
            ENCRYPT,
            enc(&[1; 1025]),
            INVALID,
            "plaintext: is 1025 bytes, over the limit of 1024",
        ),
        row(
            "context over max_item_bytes",
            ENCRYPT,
            EncryptRequest { key: "qa-aes".into(), context: vec![1; 2000], ..Default::default() }.encode_to_vec(),
            INVALID,
            "context: is 2000 bytes, over the limit of 1024",
        ),
        row(
            "ciphertext over max_item_bytes",
            DECRYPT,
            dec(&format!("vault:v1:{}", "A".repeat(2000))),
            INVALID,
            "ciphertext: is larger than the limit of 1024 bytes",
        ),
        // Over limits.max_message_bytes: refused by its declared length, before its body is read.
        row(
            "message over max_message_bytes",
            ENCRYPT_BATCH,
            batch(40, &[1; 1000]),
            INVALID,
            "the request message is over limits.max_message_bytes; send less per call (it declares 40",
        ),
        // 300 empty items (2 bytes each) would decode to 300 structs: refused as they arrive.
        row(
            "many tiny items, counted before decoding",
            ENCRYPT_BATCH,
            batch(300, b""),
            INVALID,
            "the request message has more than 266 top-level fields (limits.max_batch_items + 256)",
        ),
        row(
            "batch over max_batch_items",
            ENCRYPT_BATCH,
            batch(11, b"x"),
            INVALID,
            "items: 11 items is over the limit of 10 per call",
        ),
        // Not UTF-8, not protobuf.
        row("non-UTF-8 key", ENCRYPT, field(1, b"qa-\xff\xfe"), INVALID, "EncryptRequest.key: invalid string value"),
        row(
            "non-UTF-8 ciphertext",
            DECRYPT,
            [field(1, b"qa-aes"), field(2, b"vault:v1:\x80AAAA")].concat(),
            INVALID,
            "DecryptRequest.ciphertext: invalid string value",
        ),
        row("non-UTF-8 batch item", DECRYPT_BATCH, non_utf8_item, INVALID, "DecryptBatchItem.ciphertext"),
        row(
            "non-UTF-8 secret path",
            GET_SECRET,
            field(1, b"qa/\xed\xa0\x80"),
            INVALID,
            "GetSecretRequest.path: invalid string value",
        ),
        row("truncated message", ENCRYPT, field(1, b"qa-aes")[..5].to_vec(), INVALID, "not a valid protobuf message"),
        row("wrong wire type", ENCRYPT, vec![0x0b, 0x01], INVALID, "not a valid protobuf message"),
        // Ciphertexts: malformed, wrongly versioned, truncated.
        row("version 0", DECRYPT, dec(&format!("vault:v0:{body}")), INVALID, "ciphertext: is not a Vault ciphertext"),
        row(
            "version over u32",
            DECRYPT,
            dec(&format!("vault:v99999999999:{body}")),
            INVALID,
            "ciphertext: is not a Vault ciphertext",
        ),
        row("no payload", DECRYPT, dec("vault:v1"), INVALID, "ciphertext: is not a Vault ciphertext"),
        row("empty payload", DECRYPT, dec("vault:v1:"), INVALID, "ciphertext: is not a Vault ciphertext"),
        row("not base64", DECRYPT, dec("vault:v1:*not-base64*"), INVALID, "ciphertext: is not a Vault ciphertext"),
        row("version not yet made", DECRYPT, dec(&format!("vault:v7:{body}")), INVALID, "version is too new"),
        row("truncated base64", DECRYPT, dec(&ct[..ct.len() - 3]), INVALID, "could not decode base64"),
        row("too short to be a ciphertext", DECRYPT, dec("vault:v1:AAAA"), INVALID, "invalid ciphertext length"),
        row(
            "altered ciphertext",
            DECRYPT,
            // Its first base64 character changed (to one it is not: 'A' was the same one time in 64).
            dec(&format!("vault:v1:{}{}", if body.starts_with('A') { 'B' } else { 'A' }, &body[1..])),
            INVALID,
            "the ciphertext was altered",
        ),
        // Signing and HMAC: raw bytes reach the same checks as every other RPC.
        row("empty Sign", SIGN, vec![], INVALID, "key: must not be empty"),
        row(
            "Sign input over max_item_bytes",
            SIGN,
            [field(1, b"qa-sign"), field(2, &[1; 1025])].concat(),
            INVALID,
            "input: is 1025 bytes, over the limit of 1024",
        ),
        row(
            "Sign unknown hash",
            SIGN,
            [field(1, b"qa-sign"), field(2, b"x"), field(3, b"md5")].concat(),
            INVALID,
            "hash_algorithm: must be empty (the key's default) or one of",
        ),
        row(
            "non-UTF-8 Sign hash",
            SIGN,
            [field(1, b"qa-sign"), field(3, b"sha2-\xff")].concat(),
            INVALID,
            "SignRequest.hash_algorithm: invalid string value",
        ),
        row(
            "Verify without signature",
            VERIFY,
            [field(1, b"qa-sign"), field(2, b"x")].concat(),
            INVALID,
            "signature: must not be empty",
        ),
        row(
            "Verify signature not a Vault value",
            VERIFY,
            [field(1, b"qa-sign"), field(2, b"x"), field(3, b"vault:v1")].concat(),
            INVALID,
            "signature: is not a Vault value of the form vault:v<N>:<base64>",
        ),
        row(
            "non-UTF-8 Verify signature",
            VERIFY,
            [field(1, b"qa-sign"), field(3, b"vault:v1:\xc3\x28")].concat(),
            INVALID,
            "VerifyRequest.signature: invalid string value",
        ),
        row("non-UTF-8 Hmac key", HMAC, field(1, b"qa-\xed\xa0\x80"), INVALID, "HmacRequest.key: invalid string value"),
        row(
            "Hmac unknown algorithm",
            HMAC,
            [field(1, b"qa-hmac"), field(2, b"x"), field(3, b"sha1")].concat(),
            INVALID,
            "algorithm: must be empty (sha2-256) or one of",
        ),
        row(
            "VerifyHmac without hmac",
            VERIFY_HMAC,
            [field(1, b"qa-hmac"), field(2, b"x")].concat(),
            INVALID,
            "hmac: must not be empty",
        ),
        row(
            "non-UTF-8 VerifyHmac hmac",
            VERIFY_HMAC,
            [field(1, b"qa-hmac"), field(3, b"vault:v1:\x80")].concat(),
            INVALID,
            "VerifyHmacRequest.hmac: invalid string value",
        ),
        row(
            "VerifyHmac input over max_item_bytes",
            VERIFY_HMAC,
            [field(1, b"qa-hmac"), field(2, &[1; 1025]), field(3, b"vault:v1:AAAA")].concat(),
            INVALID,
            "input: is 1025 bytes, over the limit of 1024",
        ),
        // Rewrap batches and certificates.
        row("no rewrap items", REWRAP_BATCH, field(1, b"qa-aes"), INVALID, "items: must hold at least one item"),
        row(
            "non-UTF-8 rewrap item",
            REWRAP_BATCH,
            [field(1, b"qa-aes"), field(2, &field(1, b"vault:v1:\xff"))].concat(),
            INVALID,
            "RewrapBatchItem.ciphertext",
        ),
        row("empty IssueCertificate", ISSUE_CERT, vec![], INVALID, "role: must not be empty"),
        row(
            "non-UTF-8 common name",
            ISSUE_CERT,
            [field(1, b"web"), field(2, b"a\xff.example")].concat(),
            INVALID,
            "IssueCertificateRequest.common_name: invalid string value",
        ),
        row(
            "101 alt names",
            ISSUE_CERT,
            [field(1, b"web"), field(2, b"a.example"), (0..101).flat_map(|_| field(3, b"b.example")).collect()]
                .concat(),
            INVALID,
            "alt_names: 101 names is over the limit of 100",
        ),
        row(
            "CSR not PEM",
            SIGN_CERT,
            [field(1, b"web"), field(2, b"not a CSR")].concat(),
            INVALID,
            "csr: must be PEM (CERTIFICATE REQUEST or NEW CERTIFICATE REQUEST)",
        ),
        row(
            "revoke naming nothing",
            REVOKE_CERT,
            vec![],
            INVALID,
            "certificate: set the certificate (PEM) or its serial_number",
        ),
        row(
            "revoke naming both",
            REVOKE_CERT,
            [field(1, b"-----BEGIN CERTIFICATE-----"), field(2, b"1a:2b")].concat(),
            INVALID,
            "serial_number: set either certificate or serial_number, not both",
        ),
        row(
            "revoke by a serial that is not one",
            REVOKE_CERT,
            field(2, b"1a;2b"),
            INVALID,
            "serial_number: must be a serial number such as 1a:2b:3c",
        ),
        row("CA chain of a bad mount", CA_CHAIN, field(1, b"../pki"), INVALID, "mount:"),
        // Deadlines: 1 ms passes before the handler can ask Vault; tonic's transport may answer
        // first with CANCELLED (documented in the README).
        Row {
            deadline: Some(Duration::from_millis(1)),
            or: Some((Code::Cancelled, "Timeout expired")),
            ..row("1 ms deadline", ENCRYPT, enc(b"late"), &[Code::DeadlineExceeded], "deadline passed")
        },
    ];
    let mut failures = Vec::new();
    for r in rows {
        match call(&ch, env, r.path, r.body, r.deadline).await {
            Ok(_) => failures.push(format!("{}: answered OK", r.name)),
            Err(s) if r.codes.contains(&s.code()) && s.message().contains(r.says) => {}
            Err(s) if r.or.is_some_and(|(code, says)| s.code() == code && s.message().contains(says)) => {}
            Err(s) => failures.push(format!(
                "{}: {:?} {:?}, want {:?} saying {:?}",
                r.name,
                s.code(),
                s.message(),
                r.codes,
                r.says
            )),
        }
    }
    assert!(failures.is_empty(), "bad-input rows that failed:\n  {}", failures.join("\n  "));

    // Unknown fields are ignored (proto3): the call is served and its answer decrypts.
    let answer = call(&ch, env, ENCRYPT, unknown, None).await.expect("unknown fields are ignored");
    let unknown_ct = EncryptResponse::decode(answer.as_slice()).expect("EncryptResponse").ciphertext;
    let back = call(&ch, env, DECRYPT, dec(&unknown_ct), None).await.expect("decrypt");
    assert_eq!(DecryptResponse::decode(back.as_slice()).expect("DecryptResponse").plaintext, b"with unknown fields");
    // In a batch a bad item fails alone: the call succeeds and that item's error says why.
    let answer = call(&ch, env, ENCRYPT_BATCH, big_item.encode_to_vec(), None).await.expect("the batch is served");
    let results = EncryptBatchResponse::decode(answer.as_slice()).expect("EncryptBatchResponse").results;
    assert!(
        results.iter().enumerate().all(|(i, r)| (i == 3) == r.ciphertext.is_empty()),
        "ciphertexts of the good items"
    );
    let errors: Vec<_> = results.iter().map(|r| r.error.as_ref().map(|e| (e.code, e.message.as_str()))).collect();
    assert_eq!(
        errors,
        vec![
            None,
            None,
            None,
            Some((Code::InvalidArgument as i32, "items[3].plaintext: is 1025 bytes, over the limit of 1024")),
            None
        ]
    );
    let items = [ct.as_str(), "vault:v0:AAAA", "vault:v1"]
        .map(|c| DecryptBatchItem { ciphertext: c.into(), ..Default::default() })
        .to_vec();
    let answer = call(
        &ch,
        env,
        DECRYPT_BATCH,
        DecryptBatchRequest { key: "qa-aes".into(), items, ..Default::default() }.encode_to_vec(),
        None,
    )
    .await
    .expect("the batch is served");
    let results = DecryptBatchResponse::decode(answer.as_slice()).expect("DecryptBatchResponse").results;
    assert_eq!(results.len(), 3, "one result per item");
    assert!(results[0].error.is_none(), "{:?}", results[0].error);
    assert_eq!(results[0].plaintext, b"bad-input probe");
    for (i, r) in results.iter().enumerate().skip(1) {
        let e = r.error.as_ref().unwrap_or_else(|| panic!("item {i} of a bad ciphertext succeeded"));
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert!(e.message.starts_with(&format!("items[{i}].ciphertext: is not a Vault ciphertext")), "{}", e.message);
    }
    // Nothing above broke the gateway: it still serves.
    call(&ch, env, ENCRYPT, enc(b"still serving"), None).await.expect("the gateway still serves");
}
