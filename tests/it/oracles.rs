//! Oracles from outside the code under test. The fuzz targets (`src/fuzzing/`) restate the
//! validators' rules and the batch budget's arithmetic, so they find crashes but cannot find a
//! rule that is wrong; here real OpenBao is the judge instead:
//! - the batch budget: OpenBao's own JSON-string limit, measured at the edge with context + AAD
//!   items, and the gateway's requests for such items filling exactly up to it (as Vault's audit
//!   device recorded them), every item answered;
//! - a ciphertext's form: for a real ciphertext and hundreds of variants of it, every form Vault
//!   decrypts the gateway accepts (and decrypts to the same plaintext); the only forms the
//!   gateway refuses although Vault decrypts them are listed below with the reason.

use crate::support::{req, Env};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::Method;
use serde_json::{json, Value};
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

/// One item with context and associated data costs 6 JSON strings (3 keys, 3 values).
fn rich_item(i: usize) -> Value {
    json!({"plaintext": B64.encode(format!("budget item {i}")), "context": B64.encode(format!("tenant-{i}")),
           "associated_data": B64.encode(format!("row-{i}"))})
}

pub async fn batch_budget_meets_openbao_at_its_limit(env: &'static Env) {
    for key in ["qa-budget", "qa-budget-probe"] {
        let (status, body) = env
            .vault(Method::POST, &format!("transit/keys/{key}"), Some(json!({"type": "aes256-gcm96", "derived": true})))
            .await;
        assert!((200..300).contains(&status), "{key}: {status} {body}");
    }
    // OpenBao's limit, measured (max_request_json_strings = 1000): 1 + 6 × 166 = 997 strings
    // pass, 1 + 6 × 167 = 1003 are refused before the request is served.
    let probe = |n: usize| async move {
        let items: Vec<Value> = (0..n).map(rich_item).collect();
        env.vault(Method::POST, "transit/encrypt/qa-budget-probe", Some(json!({"batch_input": items}))).await
    };
    let (at_limit, _) = probe(166).await;
    let (over, refusal) = probe(167).await;
    println!("  budget: OpenBao answers 166 context+AAD items {at_limit}, 167 items {over} {refusal}");
    assert_eq!(at_limit, 200, "166 rich items fit OpenBao's limit");
    assert!((400..500).contains(&over), "167 rich items must be over OpenBao's limit: {over} {refusal}");

    // The gateway splits 500 such items itself; Vault's audit device shows how.
    let items: Vec<EncryptBatchItem> = (0..500)
        .map(|i| EncryptBatchItem {
            plaintext: format!("budget item {i}").into_bytes(),
            context: format!("tenant-{i}").into_bytes(),
            associated_data: format!("row-{i}").into_bytes(),
        })
        .collect();
    let mut c = Client::new(env.channel());
    let out = c
        .encrypt_batch(req(EncryptBatchRequest { key: "qa-budget".into(), items: items.clone() }, &env.qa))
        .await
        .expect("encrypt batch")
        .into_inner();
    assert_eq!(out.results.len(), 500);
    let failed: Vec<_> =
        out.results.iter().enumerate().filter_map(|(i, r)| r.error.as_ref().map(|e| (i, e.message.clone()))).collect();
    assert!(failed.is_empty(), "items refused: {:?}", &failed[..failed.len().min(3)]);
    let back = DecryptBatchRequest {
        key: "qa-budget".into(),
        items: items
            .iter()
            .zip(&out.results)
            .map(|(it, r)| DecryptBatchItem {
                ciphertext: r.ciphertext.clone(),
                context: it.context.clone(),
                associated_data: it.associated_data.clone(),
            })
            .collect(),
    };
    let back = c.decrypt_batch(req(back, &env.qa)).await.expect("decrypt batch").into_inner();
    for (i, (it, r)) in items.iter().zip(&back.results).enumerate() {
        assert!(r.error.is_none() && r.plaintext == it.plaintext, "item {i}: {:?}", r.error);
    }
    let sizes = |path: &str| -> Vec<usize> {
        let text = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["type"] == "request" && l["request"]["path"] == path)
            .filter_map(|l| l["request"]["data"]["batch_input"].as_array().map(Vec::len))
            .collect()
    };
    let (enc, dec) = (sizes("transit/encrypt/qa-budget"), sizes("transit/decrypt/qa-budget"));
    println!(
        "  budget: 500 context+AAD items sent by the gateway as Encrypt requests of {enc:?} items, Decrypt {dec:?}"
    );
    for (what, sizes) in [("encrypt", &enc), ("decrypt", &dec)] {
        assert_eq!(sizes.iter().sum::<usize>(), 500, "{what}: every item sent once: {sizes:?}");
        assert_eq!(
            sizes.iter().max(),
            Some(&166),
            "{what}: requests fill up to OpenBao's limit, not past it: {sizes:?}"
        );
    }
}

/// Forms Vault decrypts that the gateway refuses on purpose, with the reason.
const REFUSED_ON_PURPOSE: &[(&str, &str)] = &[
    (
        "non-canonical version (leading zero or sign)",
        "Vault reads the version with strconv.Atoi; it never writes such a form, and the gateway reports the version as written",
    ),
    (
        "line breaks in the base64",
        "Go's base64 decoder skips \\r and \\n; the gateway admits only the base64 alphabet, so a ciphertext is checked as sent",
    ),
];

/// Whether `form` is one of [`REFUSED_ON_PURPOSE`]: a version that is not canonical digits, or
/// a well-formed ciphertext with line breaks added.
fn refused_on_purpose(form: &str) -> bool {
    let version = form.strip_prefix("vault:v").and_then(|r| r.split(':').next()).unwrap_or_default();
    let unbroken: String = form.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    version.starts_with('0')
        || version.starts_with('+')
        || version.starts_with('-')
        || (unbroken != form && vaultgate::service::validate::ciphertext("c", &unbroken, 1 << 20).is_ok())
}

/// xorshift64*: deterministic variants.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

pub async fn vault_judges_ciphertext_forms(env: &'static Env) {
    let plaintext = b"judged by Vault";
    let (_, answer) =
        env.vault(Method::POST, "transit/encrypt/qa-aes", Some(json!({"plaintext": B64.encode(plaintext)}))).await;
    let ct = answer["data"]["ciphertext"].as_str().expect("a ciphertext").to_string();
    let body = ct.strip_prefix("vault:v1:").expect("v1").to_string();
    let url_safe: String = body
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let mut forms: Vec<String> = vec![
        ct.clone(),
        format!("vault:v01:{body}"),
        format!("vault:v+1:{body}"),
        format!("vault:v-1:{body}"),
        format!("vault:V1:{body}"),
        format!("Vault:v1:{body}"),
        format!("vault:v1:{body}\n"),
        format!(" {ct}"),
        format!("{ct} "),
        format!("vault:v1:{url_safe}"),
        format!("vault:v1:{}", body.trim_end_matches('=')),
        format!("vault:v1:{body}="),
        format!("vault:v1:{body}:x"),
        format!("vault:v1::{body}"),
        format!("vault:v 1:{body}"),
        format!("vault:v1.0:{body}"),
        format!("vault:v4294967297:{body}"),
        format!("vault:v0:{body}"),
        format!("vault:v1:{}", &body[..body.len() - 4]),
        format!("vault:v1:{}\t", body),
        format!("vault:v2:{body}"),
        format!("vault:v1:{}", B64.encode(B64.decode(&body).expect("base64"))),
    ];
    let alphabet: Vec<char> = ":v0123456789+/=-_ \nAZaz.".chars().collect();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for _ in 0..300 {
        let mut chars: Vec<char> = ct.chars().collect();
        for _ in 0..=rng.below(2) {
            let at = rng.below(chars.len());
            match rng.below(3) {
                0 => chars[at] = alphabet[rng.below(alphabet.len())],
                1 => drop(chars.remove(at)),
                _ => chars.insert(at, alphabet[rng.below(alphabet.len())]),
            }
        }
        forms.push(chars.into_iter().collect());
    }
    forms.sort();
    forms.dedup();
    let mut c = Client::new(env.channel());
    let (mut both, mut neither, mut only_gateway, mut on_purpose) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for form in &forms {
        let (status, answer) =
            env.vault(Method::POST, "transit/decrypt/qa-aes", Some(json!({"ciphertext": form}))).await;
        let vault_plaintext = answer["data"]["plaintext"].as_str().and_then(|p| B64.decode(p).ok());
        let vault_ok = status == 200 && vault_plaintext.is_some();
        let gateway_ok = vaultgate::service::validate::ciphertext("ciphertext", form, 1 << 20).is_ok();
        match (vault_ok, gateway_ok) {
            (true, true) => {
                both += 1;
                // The gateway's own answer is Vault's.
                let r = DecryptRequest { key: "qa-aes".into(), ciphertext: form.clone(), ..Default::default() };
                match c.decrypt(req(r, &env.qa)).await {
                    Ok(r) if Some(&r.get_ref().plaintext) == vault_plaintext.as_ref() => {}
                    other => wrong.push(format!(
                        "{form:?}: Vault decrypts, the gateway answered {:?}",
                        other.map(|r| r.into_inner().plaintext)
                    )),
                }
            }
            (true, false) if refused_on_purpose(form) => on_purpose += 1,
            (true, false) => wrong.push(format!("{form:?}: Vault decrypts it, the gateway refuses its form")),
            (false, true) => only_gateway += 1,
            (false, false) => neither += 1,
        }
    }
    println!(
        "  ciphertext forms judged by Vault: {} forms; both accept {both}, both refuse {neither}; the gateway passes {only_gateway} \
         on to Vault's refusal; refused on purpose {on_purpose} ({})",
        forms.len(),
        REFUSED_ON_PURPOSE.iter().map(|(what, why)| format!("{what}: {why}")).collect::<Vec<_>>().join("; ")
    );
    assert!(wrong.is_empty(), "the gateway disagrees with Vault:\n  {}", wrong.join("\n  "));
    assert!(both >= 1 && neither > 50, "the variants must include forms of both kinds: {both} / {neither}");
}
