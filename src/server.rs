//! The tonic server: the vaultgate services, `grpc.health.v1`, and reflection (v1 and
//! v1alpha, for grpcurl 1.8), all on one listener until `shutdown` resolves.

use crate::{
    config::Config,
    health, layers, listener,
    metrics::Metrics,
    pb::vaultgate::v1::{
        database_service_server::DatabaseServiceServer, encryption_service_server::EncryptionServiceServer,
        identity_service_server::IdentityServiceServer, pki_service_server::PkiServiceServer,
        secret_service_server::SecretServiceServer,
    },
    service::{database::Database, encryption::Encryption, identity::Identity, pki::Pki, secret::Secrets, Gateway},
    tls,
};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic_health::ServingStatus;

/// HTTP/2 flow-control window of a client connection (and of each of its streams), in bytes:
/// what a connection can have sent that the gateway has not read yet (docs/security.md).
pub const CONNECTION_WINDOW: u32 = 1 << 20;

/// The encoded descriptor set of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vaultgate_descriptor");

/// Builds the gateway from `config` and serves on `listener` until `shutdown` resolves; the
/// gateway counts into `metrics` (served on `metrics_listen`).
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let gateway = Gateway::new(config, metrics)?;
    serve(listener, gateway, shutdown).await
}

/// Serves an already-built gateway (tests keep a handle on it to read its counters).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Until the first probe answers, nothing is known: report NOT_SERVING rather than guess.
    health::set_all(&reporter, ServingStatus::NotServing).await;
    reporter.set_service_status(health::LIVENESS, ServingStatus::Serving).await;
    let watcher = tokio::spawn(health::watch(gateway.vault.clone(), reporter.clone(), gateway.config.health_interval));
    // Role tokens (certificate callers) are renewed in the background, so an idle role's token
    // and the leases it parents do not lapse.
    let refresher = tokio::spawn(gateway.sessions.clone().keep_roles_fresh());

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;

    let metrics_task = match gateway.config.metrics_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} (metrics_listen): {e}"))?;
            Some(tokio::spawn(crate::metrics::serve(listener, gateway.metrics.clone())))
        }
        None => None,
    };
    // Plaintext grpc.health.v1 alone, for probes that cannot speak TLS (the kubelet's).
    let health_task = match gateway.config.health_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} (health_listen): {e}"))?;
            let health_only = Server::builder().add_service(health_service.clone());
            Some(tokio::spawn(health_only.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))))
        }
        None => None,
    };
    let max = gateway.config.limits.max_message_bytes;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, vault = %gateway.vault.address(), batching = gateway.coalescer.is_some(), tls = gateway.config.tls.is_some(), "vaultgate serving");
    // Graceful shutdown: NOT_SERVING first (load balancers stop routing) while still serving for
    // `grace`; then no new connections, and calls in flight get up to `drain_timeout` to finish.
    let grace = Duration::from_millis(gateway.config.shutdown.grace_ms);
    let drain_timeout = Duration::from_millis(gateway.config.shutdown.drain_timeout_ms);
    let draining = Arc::new(Notify::new());
    let graceful = {
        let (reporter, draining, watcher) = (reporter.clone(), draining.clone(), watcher.abort_handle());
        let streams = gateway.streams.clone();
        async move {
            shutdown.await;
            tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: health NOT_SERVING");
            // Open streams end now with UNAVAILABLE + RetryInfo (their clients reconnect to
            // another replica); new ones are refused alike (`stream.rs`).
            streams.close();
            watcher.abort();
            health::set_all(&reporter, ServingStatus::NotServing).await;
            tokio::time::sleep(grace).await;
            tracing::info!("refusing new connections; draining calls in flight");
            draining.notify_one();
        }
    };
    // The layers in front of decoding (`layers.rs`), innermost first: a request meets them from
    // the bottom of this list up, its answer from the top down.
    // Connections are admitted (handshake slots, timeout, connection bound, idleness) before
    // tonic sees them.
    let admission = listener::Admission::new(&gateway.config.limits, gateway.metrics.clone());
    let services = Services {
        encryption: EncryptionServiceServer::new(Encryption(gateway.clone())).max_decoding_message_size(max),
        secrets: SecretServiceServer::new(Secrets(gateway.clone())).max_decoding_message_size(max),
        database: DatabaseServiceServer::new(Database(gateway.clone())).max_decoding_message_size(max),
        pki: PkiServiceServer::new(Pki(gateway.clone())).max_decoding_message_size(max),
        identity: IdentityServiceServer::new(Identity(gateway.clone())).max_decoding_message_size(max),
    };
    let layers = layers::Stack::new()
        // The vaultgate services themselves; health and reflection go on to tonic's router.
        .push_concern(services)
        // On the services: tonic's OUT_OF_RANGE (message too large) becomes INVALID_ARGUMENT
        // before any layer counts or audits it.
        .push_transport_answer()
        // Request messages are charged to the global budget by their declared length and
        // fields as their bytes arrive, before tonic buffers and decodes them.
        .push_budget(
            Arc::new(layers::ByteBudget::new(
                gateway.config.limits.max_request_bytes_in_flight,
                gateway.metrics.clone(),
            )),
            &gateway.config.limits,
        )
        // The deadline covers reading and decoding the request too.
        .push_deadline()
        // Past max_concurrent_calls a call is refused before any byte of its body is read.
        .push_shed(gateway.in_flight.clone(), gateway.config.limits.max_concurrent_calls, gateway.metrics.clone())
        // One audit line per call, whoever answered it inside; fail closed.
        .push_audit(gateway.audit.clone(), gateway.metrics.clone())
        // Metrics count what the caller got (after the audit layer's fail-closed answer).
        .push_observe(gateway.metrics.clone())
        // The call's exported span (with [traces]), child of the caller's traceparent.
        .push_trace()
        // The call's context (RPC, request id, deadline, peer) and the request id on every
        // answer.
        .push_context()
        // Outermost, every path: the stream counts on its connection until its answer ends
        // (the listener closes connections idle too long).
        .push_streams(admission.clone());
    let mut builder = Server::builder();
    let age = &gateway.config.connections;
    if age.max_age_ms > 0 {
        // GOAWAY after max_age (callers reconnect and spread over new replicas), then its calls get the grace.
        builder = builder
            .max_connection_age(Duration::from_millis(age.max_age_ms))
            .max_connection_age_grace(Duration::from_millis(age.max_age_grace_ms));
    }
    let router = builder
        .layer(layers.into_inner())
        // HTTP/2 keepalive detects dead client connections behind load balancers, and keeps the
        // connections of idle streams open through L4 proxies (`stream.rs` adds heartbeat
        // messages for L7 proxies, which time out a stream that carries no data).
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // tonic leaves streams per connection unlimited: one connection gets a small number.
        .max_concurrent_streams(gateway.config.limits.max_streams_per_connection)
        // Header blocks are bounded too (a JWT or a certificate chain fits many times over).
        .http2_max_header_list_size(64 << 10)
        // Flow control bounds what a client can push before the gateway reads it (the byte
        // budget counts from there): 1 MiB per connection, all its streams together, stated
        // rather than left to hyper's defaults.
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let drain = drain_timeout;
    let result = match &gateway.config.tls {
        Some(tls) => {
            let certificates = tls::Certificates::load(tls, gateway.metrics.clone())?;
            let reload = tokio::spawn(certificates.clone().reload(tls.clone()));
            let incoming = listener::incoming(listener, admission, move |tcp| certificates.acceptor().accept(tcp));
            let served = until_drained(router.serve_with_incoming_shutdown(incoming, graceful), &draining, drain).await;
            reload.abort();
            served
        }
        None => {
            let incoming = listener::incoming(listener, admission, listener::first_bytes);
            until_drained(router.serve_with_incoming_shutdown(incoming, graceful), &draining, drain).await
        }
    };
    watcher.abort();
    refresher.abort();
    // Leases of ended streams are revoked (their grace cut short) before the tokens that parent them.
    gateway.streams.finish(drain).await;
    gateway.sessions.revoke_all(&gateway.leases.parents()).await;
    for task in [metrics_task.map(|t| t.abort_handle()), health_task.map(|t| t.abort_handle())].into_iter().flatten() {
        task.abort();
    }
    result
}

/// The vaultgate services, reached from the innermost layer by the service name in the path.
/// tonic's own router (axum) would also do it, at the cost per call of decoding the URL,
/// matching it against every route and boxing the request, the answer and a clone of the
/// route's service; health and reflection still go through it (`docs/benchmarks.md`).
#[derive(Clone)]
struct Services {
    encryption: EncryptionServiceServer<Encryption>,
    secrets: SecretServiceServer<Secrets>,
    database: DatabaseServiceServer<Database>,
    pki: PkiServiceServer<Pki>,
    identity: IdentityServiceServer<Identity>,
}

impl layers::Concern for Services {
    fn around<S: layers::Next>(&self, request: layers::HttpRequest, next: &mut S) -> layers::CallFuture {
        use tonic::server::NamedService;
        use tower::Service;
        // `/{service}/{method}`; the generated services are always ready and answer an unknown
        // method with UNIMPLEMENTED themselves.
        let path = request.uri().path();
        let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map_or("", |(service, _)| service);
        match service {
            EncryptionServiceServer::<Encryption>::NAME => self.encryption.clone().call(request),
            SecretServiceServer::<Secrets>::NAME => self.secrets.clone().call(request),
            DatabaseServiceServer::<Database>::NAME => self.database.clone().call(request),
            PkiServiceServer::<Pki>::NAME => self.pki.clone().call(request),
            IdentityServiceServer::<Identity>::NAME => self.identity.clone().call(request),
            _ => layers::pass(request, next),
        }
    }
}

/// Runs the server until it stops by itself, or until `drain_timeout` after draining began.
async fn until_drained(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    draining: &Notify,
    drain_timeout: Duration,
) -> Result<(), String> {
    let deadline = async {
        draining.notified().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| format!("gRPC server failed: {e}")),
        () = deadline => {
            tracing::warn!(drain_timeout_ms = drain_timeout.as_millis() as u64, "drain timeout: dropping calls still in flight");
            Ok(())
        }
    }
}
