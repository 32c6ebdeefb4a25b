//! The bodies of the cargo-fuzz targets (`fuzz/`), so that one copy serves both the
//! coverage-guided run (`make fuzz`, each `fuzz/fuzz_targets/<name>.rs` calls `run` here) and a
//! cheap smoke in every `cargo test`: the seeds, the regressions and a bounded number of mutated
//! inputs per target. Compiled only for tests and with the `fuzzing` feature (the fuzz crate's).

pub mod ciphertext;
pub mod config;
pub mod jwt_claims;
pub mod requests;
pub mod vault_json;

/// The body of one target: panics when an input breaks what the target checks.
pub type Body = fn(&[u8]);

/// Every target by its cargo-fuzz name (the directory of its seeds and regressions).
pub const TARGETS: [(&str, Body); 5] = [
    ("ciphertext", ciphertext::run),
    ("config", config::run),
    ("vault_json", vault_json::run),
    ("jwt_claims", jwt_claims::run),
    ("requests", requests::run),
];

#[cfg(test)]
mod tests {
    use super::TARGETS;
    use std::path::Path;

    /// Mutated inputs per target in the smoke; `make fuzz` is the real search.
    const MUTATIONS: usize = 20_000;

    /// Tokens the mutator splices in: the syntax of what the targets parse.
    const TOKENS: &[&[u8]] = &[
        b"vault:v",
        b"vault:v1:",
        b"99999999999",
        b"0",
        b":",
        b"/",
        b"..",
        b"=",
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\n",
        b"\\u0000",
        b"\xff",
        b"\xc3\x28",
        b"errors",
        b"data",
        b"batch_results",
        b"[[callers]]",
        b"max_item_bytes = ",
        b"18446744073709551615",
        b"eyJ",
        b".",
        b"-1",
        b"true",
        b"null",
        b"%",
    ];

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A seed changed by 1-4 random edits: bit flips, random bytes, deletions, tokens, splices.
    fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds.get(rng.below(seeds.len())).cloned().unwrap_or_default();
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len() + 1);
            match rng.below(7) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 => data.insert(at, rng.next() as u8),
                2 if at < data.len() => drop(data.drain(at..(at + 1 + rng.below(8)).min(data.len()))),
                3 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    data.splice(at..at, token.iter().copied());
                }
                4 => data.truncate(at),
                5 if !seeds.is_empty() => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len() + 1);
                    data.splice(at..at, other[from..].iter().copied());
                }
                _ => data.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            }
        }
        data
    }

    fn files(dir: &Path) -> Vec<Vec<u8>> {
        let mut paths: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        paths.sort();
        paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// Runs one input; a panic fails the test naming the target and the input.
    fn run_one(name: &str, target: super::Body, input: &[u8]) {
        if std::panic::catch_unwind(|| target(input)).is_err() {
            panic!("fuzz target {name} failed on input {input:?} (add it to fuzz/regressions/{name}/)");
        }
    }

    /// The cargo-fuzz crate (`fuzz/`, built only by `make fuzz`) is what [`TARGETS`] says: a
    /// `[[bin]]` and a `fuzz_targets/<name>.rs` per target, each calling its `run` here and
    /// nothing else. `make test` checks this instead of compiling the crate: that took two minutes
    /// of CI (its own lock file and target directory, libFuzzer's C++ built for a check).
    #[test]
    fn the_fuzz_crate_builds_every_target_and_only_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has {bins} [[bin]]s for {} targets", TARGETS.len());
        let mut files: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut want: Vec<String> = TARGETS.iter().map(|(name, _)| format!("{name}.rs")).collect();
        want.sort();
        assert_eq!(files, want, "fuzz/fuzz_targets/ holds one file per target");
        for (name, _) in TARGETS {
            assert!(
                manifest.contains(&format!("[[bin]]\nname = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"\n")),
                "fuzz/Cargo.toml: no [[bin]] {name} at fuzz_targets/{name}.rs"
            );
            let source = std::fs::read_to_string(root.join("fuzz_targets").join(format!("{name}.rs"))).unwrap();
            let code: Vec<&str> = source.lines().filter(|l| !l.starts_with("//") && !l.trim().is_empty()).collect();
            let body = format!("libfuzzer_sys::fuzz_target!(|data: &[u8]| vaultgate::fuzzing::{name}::run(data));");
            assert_eq!(code, ["#![no_main]", body.as_str()], "fuzz/fuzz_targets/{name}.rs");
        }
    }

    #[test]
    fn fuzz_smoke_of_every_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut report = Vec::new();
        for (n, (name, target)) in TARGETS.into_iter().enumerate() {
            let regressions = files(&root.join("regressions").join(name));
            let seeds = files(&root.join("corpus").join(name));
            assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
            for input in regressions.iter().chain(&seeds) {
                run_one(name, target, input);
            }
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            for _ in 0..MUTATIONS {
                run_one(name, target, &mutate(&mut rng, &seeds));
            }
            report.push(format!("{name}: {}", regressions.len() + seeds.len() + MUTATIONS));
        }
        println!("fuzz smoke, executions without a crash per target: {}", report.join(", "));
    }
}
