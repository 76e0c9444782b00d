//! The spans of one attempt (contract §14), in the trace the task carries
//! (its message's `traceparent` header, else `metadata.traceparent`):
//! `task.attempt`, with `task.handler` (whose id the handler gets as its
//! `traceparent`) and `task.result` (settling: the result, the retry or
//! the dead letter) under it. Made only when the node's `traces` is on;
//! otherwise nothing is allocated and the handler gets the task's own
//! `traceparent`, unchanged.

use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer,
};
use opentelemetry::{global, Context, KeyValue};

use crate::wire::trace::TraceParent;

/// What the attempt's spans need to know about the task.
pub(super) struct TaskLabels<'a> {
    pub task_id: &'a str,
    pub task_type: &'a str,
    pub queue: &'a str,
    pub attempt: u32,
    pub node_id: &'a str,
}

/// The spans of one attempt (none when traces are off).
pub(super) struct AttemptSpans {
    incoming: Option<TraceParent>,
    attempt: Option<Context>,
    handler: Option<Context>,
    result: Option<Context>,
}

impl AttemptSpans {
    /// Starts `task.attempt` and `task.handler` when `on`.
    pub(super) fn start(on: bool, incoming: Option<TraceParent>, t: &TaskLabels) -> Self {
        let mut spans = AttemptSpans {
            incoming,
            attempt: None,
            handler: None,
            result: None,
        };
        if !on {
            return spans;
        }
        let tracer = global::tracer("jetweave");
        let parent = match incoming {
            Some(tp) => Context::new().with_remote_span_context(remote(&tp)),
            None => Context::new(),
        };
        let attrs = vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("jetweave.task_id", t.task_id.to_string()),
            KeyValue::new("jetweave.task_type", t.task_type.to_string()),
            KeyValue::new("jetweave.queue", t.queue.to_string()),
            KeyValue::new("jetweave.attempt", i64::from(t.attempt)),
            KeyValue::new("jetweave.node_id", t.node_id.to_string()),
        ];
        let attempt = tracer
            .span_builder("task.attempt")
            .with_kind(SpanKind::Consumer)
            .with_attributes(attrs)
            .start_with_context(&tracer, &parent);
        let attempt = parent.with_span(attempt);
        let handler = tracer
            .span_builder("task.handler")
            .with_attributes(vec![KeyValue::new(
                "jetweave.task_type",
                t.task_type.to_string(),
            )])
            .start_with_context(&tracer, &attempt);
        spans.handler = Some(attempt.with_span(handler));
        spans.attempt = Some(attempt);
        spans
    }

    /// The `traceparent` the handler gets: its span's, or (traces off) the
    /// task's own.
    pub(super) fn handler_traceparent(&self) -> Option<String> {
        match &self.handler {
            Some(cx) => {
                let sc = cx.span().span_context().clone();
                TraceParent::from_ids(
                    sc.trace_id().to_bytes(),
                    sc.span_id().to_bytes(),
                    sc.is_sampled(),
                )
                .map(|tp| tp.to_string())
            }
            None => self.incoming.map(|tp| tp.to_string()),
        }
    }

    /// Ends `task.handler` (an error marks it failed) and starts
    /// `task.result`.
    pub(super) fn handler_ended(&mut self, error: Option<&str>) {
        let Some(cx) = self.handler.take() else {
            return;
        };
        end(&cx, error);
        if let Some(attempt) = &self.attempt {
            let tracer = global::tracer("jetweave");
            let span = tracer.start_with_context("task.result", attempt);
            self.result = Some(attempt.with_span(span));
        }
    }

    /// Ends `task.result` and `task.attempt` with the task's verdict.
    pub(super) fn ended(mut self, verdict: &str, error: Option<&str>) {
        if let Some(cx) = self.result.take() {
            cx.span()
                .set_attribute(KeyValue::new("jetweave.verdict", verdict.to_string()));
            end(&cx, None);
        }
        if let Some(cx) = self.attempt.take() {
            cx.span()
                .set_attribute(KeyValue::new("jetweave.verdict", verdict.to_string()));
            end(&cx, error);
        }
    }
}

fn end(cx: &Context, error: Option<&str>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(Status::error(e.chars().take(500).collect::<String>()));
    }
    span.end();
}

/// The caller's span, as a remote parent.
fn remote(tp: &TraceParent) -> SpanContext {
    let flags = if tp.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(tp.trace_id()),
        opentelemetry::trace::SpanId::from_bytes(tp.span_id()),
        flags,
        true,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_traces_off_the_handler_gets_the_tasks_own_traceparent() {
        let labels = TaskLabels {
            task_id: "t",
            task_type: "echo",
            queue: "default",
            attempt: 1,
            node_id: "n",
        };
        let tp = TraceParent::new_root();
        let spans = AttemptSpans::start(false, Some(tp), &labels);
        assert_eq!(spans.handler_traceparent(), Some(tp.to_string()));
        assert_eq!(
            AttemptSpans::start(false, None, &labels).handler_traceparent(),
            None
        );
    }
}
