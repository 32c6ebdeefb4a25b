//! Compiles `proto/` with protox (pure Rust, no `protoc` needed) and emits the descriptor set that
//! server reflection serves.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/vaultgate/v1/encryption.proto",
        "proto/vaultgate/v1/secret.proto",
        "proto/vaultgate/v1/database.proto",
        "proto/vaultgate/v1/identity.proto",
        "proto/vaultgate/v1/pki.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("vaultgate_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Our codec: a request that does not decode is INVALID_ARGUMENT, not tonic-prost's INTERNAL.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::GatewayCodec")
        // Messages carrying plaintexts, data keys, secret values, passwords, private keys or
        // inputs to sign/HMAC: their `Debug` is
        // written by hand in `src/redact.rs` and never prints them.
        .skip_debug([
            ".vaultgate.v1.EncryptRequest",
            ".vaultgate.v1.DecryptResponse",
            ".vaultgate.v1.EncryptBatchItem",
            ".vaultgate.v1.DecryptBatchResult",
            ".vaultgate.v1.GenerateDataKeyResponse",
            ".vaultgate.v1.GetSecretResponse",
            ".vaultgate.v1.GetDbCredsResponse",
            ".vaultgate.v1.WatchSecretResponse",
            ".vaultgate.v1.WatchDbCredsResponse",
            ".vaultgate.v1.IssueCertificateResponse",
            ".vaultgate.v1.RevokeCertificateRequest",
            ".vaultgate.v1.SignRequest",
            ".vaultgate.v1.VerifyRequest",
            ".vaultgate.v1.HmacRequest",
            ".vaultgate.v1.VerifyHmacRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
