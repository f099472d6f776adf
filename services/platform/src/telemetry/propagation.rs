//! W3C trace context in and out of the places it travels: gRPC metadata, the staged record's
//! columns and the stream entry's fields.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A serialized trace context: `traceparent` and `tracestate` (the latter often absent). The
/// one shape it has everywhere it travels: the staged row's columns (hence `FromRow`), the log
/// record, the stream entry's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// The trace context of `span`, to hand on to the next hop.
pub fn of_span(span: &tracing::Span) -> TraceContext {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    TraceContext {
        traceparent: carrier.remove("traceparent"),
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    }
}

/// The remote context a `TraceContext` names (empty when absent or malformed).
pub fn context_of(trace: &TraceContext) -> Context {
    let mut carrier = HashMap::new();
    if let Some(tp) = &trace.traceparent {
        carrier.insert("traceparent".to_string(), tp.clone());
    }
    if let Some(ts) = &trace.tracestate {
        carrier.insert("tracestate".to_string(), ts.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The remote context carried by HTTP/2 (gRPC) headers.
pub fn context_of_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of `parent` when `parent` holds a valid remote span. Must be called
/// before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only if the span was already started or tracing is off; either way the span
        // simply stays a root, which is the best that can be done.
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to `other` (e.g. a record's span to the batch that carried it).
pub fn link(span: &tracing::Span, other: &tracing::Span) {
    span.add_link(other.context().span().span_context().clone());
}

/// Puts a record's fresh root `span` into the trace `trace` names, linked to the `batch` that
/// carries it, and returns it.
pub fn join(span: tracing::Span, trace: &TraceContext, batch: &tracing::Span) -> tracing::Span {
    set_remote_parent(&span, context_of(trace));
    link(&span, batch);
    span
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_the_round_trip() {
        let trace = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=1".into()),
        };
        let cx = context_of(&trace);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn garbage_gives_no_parent() {
        let trace = TraceContext {
            traceparent: Some("not a traceparent".into()),
            tracestate: None,
        };
        assert!(!context_of(&trace).span().span_context().is_valid());
        assert!(
            !context_of(&TraceContext::default())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
