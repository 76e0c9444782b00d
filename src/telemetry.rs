//! Exporting traces with OpenTelemetry OTLP (contract §14).
//!
//! Nodes make spans for every attempt they run (`task.attempt`, its
//! `task.handler` and `task.result` children) in the trace the task
//! carries (see [`crate::wire::trace`]), through the global OpenTelemetry
//! tracer, and only when [`crate::NodeConfig::traces`] is on: with it off
//! (the default) no span is made at all and handlers get the task's own
//! `traceparent`. [`otlp`] installs a global tracer provider that sends
//! the spans in batches over OTLP/HTTP; the binary calls it when
//! `--otlp-endpoint` (env `OTEL_EXPORTER_OTLP_ENDPOINT`) is set.
//!
//! The usual OpenTelemetry variables tune it: `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/json`, the default here, or `http/protobuf`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY` (ms between
//! batches, 5000 by default), `OTEL_SERVICE_NAME`.

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::error::Error;

/// The installed exporter; [`Traces::shutdown`] sends what is left.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// Sends spans to the OTLP/HTTP collector at `endpoint` (a base URL such as
/// `http://localhost:4318`; `/v1/traces` is appended), as `service`, and
/// makes that the global tracer provider.
pub async fn otlp(endpoint: &str, service: &str) -> Result<Traces, Error> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    // The blocking HTTP client the batch exporter uses must be built off
    // the async runtime.
    let provider = tokio::task::spawn_blocking(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .map_err(|e| Error::Config(format!("OTLP exporter: {e}")))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Ok::<_, Error>(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    })
    .await
    .map_err(|e| Error::Config(format!("OTLP exporter: {e}")))??;
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Traces { provider })
}

impl Traces {
    /// Exports the spans not sent yet, then stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}
