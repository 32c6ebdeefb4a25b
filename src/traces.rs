//! OpenTelemetry traces (`[traces]`): the spans the gateway exports over OTLP/gRPC, and the W3C
//! `traceparent` taken from a call's metadata and sent on with its Vault requests.
//!
//! Exported spans are `tracing` spans of the target [`TARGET`] only, made in three places:
//! `call` (the `Trace` layer of `layers.rs`, child of the caller's `traceparent`),
//! `coalescer.wait` (`batch.rs`, a call's wait for its item's Transit batch, linked to that
//! batch's span), `transit.batch` (`batch.rs`, the root of a batch's own trace) and
//! `vault.request` (`vault.rs`, one HTTP request to Vault, whose `traceparent` header it sends).
//! No other span or event reaches the collector, so nothing is exported that was not chosen here.
//!
//! Invariants: span attributes are fixed names or configured names only (RPC name, gRPC code,
//! Vault endpoint kind such as `transit/encrypt`, HTTP status, role, batch size): never a key
//! name, path, plaintext, ciphertext, token or JWT. Off (no `[traces]`), no layer is interested in
//! [`TARGET`], so the spans are disabled and cost a filter check; nothing is injected.

use crate::config::TracesConfig;
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{span_processor_with_async_runtime::BatchSpanProcessor, Sampler, SdkTracerProvider},
    Resource,
};
use std::time::Duration;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::Targets, registry::LookupSpan, Layer};

/// The `tracing` target of every exported span (`target: "vaultgate::traces"` in each macro).
pub const TARGET: &str = "vaultgate::traces";

/// The exporter while it runs: [`Exporter::shutdown`] sends what is still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts the OTLP/gRPC exporter of `config` (on the current tokio runtime) and returns it with
    /// the `tracing` layer that feeds it the spans of [`TARGET`].
    pub fn start<S>(config: &TracesConfig) -> Result<(Exporter, impl Layer<S>), String>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&config.endpoint)
            .with_timeout(Duration::from_millis(config.export_timeout_ms))
            .build()
            .map_err(|e| format!("traces.endpoint: {e}"))?;
        // Exports run on tokio: the SDK's own thread cannot drive tonic's connection.
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(Resource::builder_empty().with_service_name(config.service_name.clone()).build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("vaultgate"))
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
        Ok((Exporter { provider }, layer))
    }

    /// Flushes and stops the exporter (at the end of `serve`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: exporter shutdown");
        }
    }
}

/// The caller's trace context from its `traceparent`/`tracestate` metadata; `None` when absent or
/// malformed (the call then starts a trace of its own).
pub fn remote_parent(headers: &HeaderMap) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&Carrier(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the caller's trace when its metadata carries one.
pub fn follow(span: &tracing::Span, headers: &HeaderMap) {
    if let Some(parent) = remote_parent(headers) {
        // Err only when traces are off (the span is disabled): nothing to follow then.
        let _ = span.set_parent(parent);
    }
}

/// Puts the `traceparent` (and `tracestate`) of `span` on an outgoing request; nothing when the
/// span has no trace context (traces off). A sampled-out span still sends its ids, flag `00`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut CarrierMut(headers));
    }
}

/// The span context of `span` (to link to it), when it has one.
pub fn span_context(span: &tracing::Span) -> Option<opentelemetry::trace::SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

struct Carrier<'a>(&'a HeaderMap);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct CarrierMut<'a>(&'a mut HeaderMap);

impl Injector for CarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::try_from(*k).unwrap(), HeaderValue::try_from(*v).unwrap());
        }
        h
    }

    /// Metadata given, and the (trace id, parent span id, sampled) it must yield.
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<(&'a str, &'a str, bool)>);

    #[test]
    fn traceparent_table() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cases: &[Case] = &[
            (&[("traceparent", good)], Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true))),
            (
                &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")],
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", false)),
            ),
            (&[], None),
            (&[("traceparent", "garbage")], None),
            // All-zero ids are invalid (W3C): the call starts its own trace.
            (&[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")], None),
            (&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")], None),
            (&[("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], None),
            (&[("traceparent", &"0".repeat(4096))], None),
        ];
        for (given, want) in cases {
            let got = remote_parent(&headers(given)).map(|cx| {
                let sc = cx.span().span_context().clone();
                (sc.trace_id().to_string(), sc.span_id().to_string(), sc.is_sampled())
            });
            let want = want.map(|(t, s, sampled)| (t.to_string(), s.to_string(), sampled));
            assert_eq!(got, want, "{given:?}");
        }
    }

    #[test]
    fn nothing_is_injected_when_traces_are_off() {
        // No OpenTelemetry layer in this process: spans have no context to send.
        let span = tracing::info_span!(target: "vaultgate::traces", "vault.request");
        let mut h = HeaderMap::new();
        inject(&span, &mut h);
        assert!(h.is_empty(), "{h:?}");
        assert!(span_context(&span).is_none());
    }
}
