//! A test OTLP trace receiver: a real gRPC server speaking the OpenTelemetry collector protocol,
//! keeping every span it is sent so tests can check how traces join up.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// A span as received, with ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ReceivedSpan>>>);

pub struct OtlpReceiver {
    addr: SocketAddr,
    tls: bool,
    sink: Sink,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A receiver that speaks only TLS, with this certificate chain and key (PEM); its endpoint
    /// is `https://`.
    pub async fn start_tls(cert: &[u8], key: &[u8]) -> Self {
        Self::start_with(Some(tonic::transport::Identity::from_pem(cert, key))).await
    }

    async fn start_with(tls: Option<tonic::transport::Identity>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        let secure = tls.is_some();
        if let Some(identity) = tls {
            let config = tonic::transport::ServerTlsConfig::new().identity(identity);
            builder = builder.tls_config(config).unwrap();
        }
        let server = builder
            .add_service(TraceServiceServer::new(sink.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    stopped.await.ok();
                },
            );
        tokio::spawn(server);
        Self {
            addr,
            tls: secure,
            sink,
            _stop: stop,
        }
    }

    /// The value for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attributes(&r.attributes).remove("service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.0.lock().unwrap().extend(received);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
