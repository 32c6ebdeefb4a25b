//! The `vaultgate` binary: parses the command line, loads the config, starts logging, binds the
//! listener and hands over to `server::run` (or `dev::run`). Nothing else lives here.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};
use vaultgate::{config::Config, dev, server, traces};

const USAGE: &str = "usage:
  vaultgate serve --config FILE
  vaultgate dev [--dir DIR] [--listen 127.0.0.1:50051] [--metrics-listen 127.0.0.1:0] [--mtls]
  vaultgate check-config FILE [--print]

  --mtls   serve TLS on the dev listener, with optional client certificates: the demo JWT
           callers still work, and DIR/callers/billing-cert.pem is a demo certificate caller
  --print  after checking, print the effective config (every default filled in), secrets redacted";

enum Command {
    Serve { config: PathBuf },
    Dev { dir: Option<PathBuf>, listen: SocketAddr, metrics: SocketAddr, mtls: bool },
    CheckConfig { file: PathBuf, print: bool },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let sub = it.next().ok_or("missing command")?;
    let mut flags = std::collections::HashMap::new();
    let mut positional = Vec::new();
    while let Some(flag) = it.next() {
        let value = match flag.as_str() {
            "--mtls" | "--print" => "true".to_string(),
            f if !f.starts_with("--") => {
                positional.push(flag.clone());
                continue;
            }
            _ => it.next().ok_or_else(|| format!("{flag} needs a value"))?.clone(),
        };
        if flags.insert(flag.as_str(), value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let allowed: &[&str] = match sub.as_str() {
        "serve" => &["--config"],
        "dev" => &["--dir", "--listen", "--metrics-listen", "--mtls"],
        "check-config" => &["--print"],
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some(bad) = flags.keys().find(|k| !allowed.contains(k)) {
        return Err(format!("unknown option {bad} for {sub}"));
    }
    let addr = |value: Option<String>, default: &str, flag: &str| -> Result<SocketAddr, String> {
        value.unwrap_or_else(|| default.into()).parse().map_err(|e| format!("{flag}: {e}"))
    };
    match (sub.as_str(), positional.as_slice()) {
        ("check-config", [file]) => {
            Ok(Command::CheckConfig { file: file.into(), print: flags.contains_key("--print") })
        }
        ("check-config", _) => Err("check-config needs exactly one FILE".into()),
        (_, [extra, ..]) => Err(format!("unexpected argument {extra:?} for {sub}")),
        ("serve", []) => {
            Ok(Command::Serve { config: flags.remove("--config").ok_or("serve needs --config FILE")?.into() })
        }
        _ => {
            let listen = addr(flags.remove("--listen"), "127.0.0.1:50051", "--listen")?;
            // Metrics on in dev mode: by default any free port on the listen address's host.
            let metrics = addr(flags.remove("--metrics-listen"), &format!("{}:0", listen.ip()), "--metrics-listen")?;
            Ok(Command::Dev {
                dir: flags.remove("--dir").map(PathBuf::from),
                listen,
                metrics,
                mtls: flags.remove("--mtls").is_some(),
            })
        }
    }
}

/// `vaultgate check-config`: exit 0 when the config is valid (printing it with `--print`), 1 with
/// every problem on stderr otherwise. Starts nothing and contacts nothing.
fn check_config(file: &std::path::Path, print: bool) -> ExitCode {
    match vaultgate::config::check::check_file(file) {
        Ok(effective) => {
            if print {
                print!("{effective}");
            } else {
                println!("{}: ok", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{}:{p}", file.display());
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (`[log]`, `RUST_LOG` overrides the level) and, with `[traces]`, exports the
/// spans of `traces::TARGET` (never logged: they would repeat every line's context).
fn init_tracing(
    format: &str,
    level: &str,
    traces: Option<&vaultgate::config::TracesConfig>,
) -> Result<Option<traces::Exporter>, String> {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
        .add_directive(format!("{}=off", traces::TARGET).parse().map_err(|e| format!("log filter: {e}"))?);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The JSON lines' span fields are written by `log_fields` (one allocation per span).
    let fmt = if format == "json" {
        fmt.json().fmt_fields(vaultgate::log_fields::JsonSpanFields).boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match traces {
        Some(config) => {
            let (exporter, layer) = traces::Exporter::start(config)?;
            registry.with(layer).init();
            Ok(Some(exporter))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}

/// The serving model (ARCHITECTURE.md, "Serving model"): with one CPU to run on (a pod's CPU
/// limit of 1, or a process pinned to one core) every task runs on one thread, so a call's
/// HTTP/2 connection task, its handler, the coalescer and the Vault client's connection task
/// hand over to each other without a cross-thread wake-up; with more CPUs, one worker each.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cpus);
        b
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    match runtime() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("vaultgate: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultgate: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Serve { config } => match Config::load(&config) {
            Ok(config) => match init_tracing(&config.log.format, &config.log.level, config.traces.as_ref()) {
                Ok(exporter) => {
                    let served = match tokio::net::TcpListener::bind(config.listen).await {
                        Ok(listener) => {
                            server::run(listener, Arc::new(config), Default::default(), dev::shutdown_signal()).await
                        }
                        Err(e) => Err(format!("cannot listen on {}: {e}", config.listen)),
                    };
                    // The spans still buffered go out before exit (the SDK waits on the runtime).
                    if let Some(exporter) = exporter {
                        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
                    }
                    served
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Command::Dev { dir, listen, metrics, mtls } => match init_tracing("human", "info", None) {
            Ok(_) => dev::run(dir, listen, metrics, mtls).await,
            Err(e) => Err(e),
        },
        Command::CheckConfig { file, print } => return check_config(&file, print),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaultgate: {e}");
            ExitCode::FAILURE
        }
    }
}
