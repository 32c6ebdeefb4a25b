//! The `vaultgate` binary: parses the command line, loads the config, starts logging, binds the
//! listener and hands over to `server::run` (or `dev::run`). Nothing else lives here.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};
use vaultgate::{config::Config, dev, server};

const USAGE: &str = "usage:
  vaultgate serve --config FILE
  vaultgate dev [--dir DIR] [--listen 127.0.0.1:50051] [--mtls]

  --mtls  serve TLS on the dev listener, with optional client certificates: the demo JWT
          callers still work, and DIR/callers/billing-cert.pem is a demo certificate caller";

enum Command {
    Serve { config: PathBuf },
    Dev { dir: Option<PathBuf>, listen: SocketAddr, mtls: bool },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let sub = it.next().ok_or("missing command")?;
    let mut flags = std::collections::HashMap::new();
    while let Some(flag) = it.next() {
        let value = match flag.as_str() {
            "--mtls" => "true".to_string(),
            _ => it.next().ok_or_else(|| format!("{flag} needs a value"))?.clone(),
        };
        if flags.insert(flag.as_str(), value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let allowed: &[&str] = match sub.as_str() {
        "serve" => &["--config"],
        "dev" => &["--dir", "--listen", "--mtls"],
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some(bad) = flags.keys().find(|k| !allowed.contains(k)) {
        return Err(format!("unknown option {bad} for {sub}"));
    }
    match sub.as_str() {
        "serve" => Ok(Command::Serve { config: flags.remove("--config").ok_or("serve needs --config FILE")?.into() }),
        _ => Ok(Command::Dev {
            dir: flags.remove("--dir").map(PathBuf::from),
            listen: flags
                .remove("--listen")
                .unwrap_or_else(|| "127.0.0.1:50051".into())
                .parse()
                .map_err(|e| format!("--listen: {e}"))?,
            mtls: flags.remove("--mtls").is_some(),
        }),
    }
}

fn init_tracing(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
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
            Ok(config) => {
                init_tracing(&config.log.format, &config.log.level);
                match tokio::net::TcpListener::bind(config.listen).await {
                    Ok(listener) => {
                        server::run(listener, Arc::new(config), Default::default(), dev::shutdown_signal()).await
                    }
                    Err(e) => Err(format!("cannot listen on {}: {e}", config.listen)),
                }
            }
            Err(e) => Err(e),
        },
        Command::Dev { dir, listen, mtls } => {
            init_tracing("human", "info");
            dev::run(dir, listen, mtls).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaultgate: {e}");
            ExitCode::FAILURE
        }
    }
}
